"""Generation of hard negatives and hard positives from captions (`python -m hpjax.generate`).

tagger (parts of speech) -> phrases (noun phrases, relations) -> rules (the rule families) ->
sources (captions in) + shards (resumable, sliced work) -> report -> run (the program).
prompts: the LLM prompt templates (prompts/*.txt) for generators that plug in as
`rules.Generator`s.
"""
