"""Generation of hard negatives and hard positives from captions (`python -m hpjax.generate`).

tagger (parts of speech) -> phrases (noun phrases, relations) -> rules (the rule families) ->
sources (captions in) + shards (resumable, sliced work) -> run (the program).
"""
