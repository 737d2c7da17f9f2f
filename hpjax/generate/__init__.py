"""Generation of hard negatives and hard positives from captions (`python -m hpjax.generate`).

tagger (parts of speech) -> phrases (noun phrases, relations) -> rules (the rule families) ->
sources (captions in) + shards (resumable, sliced work) -> report -> run (the program).
prompts: the LLM prompt templates (prompts/*.txt); llm: the LLM generator of hard positives (a
`rules.Generator`) over a sampler (llm_keras: JAX on keras-hub; llm_torch: transformers; both on
llm_batches), its answers checked by parse.
"""
