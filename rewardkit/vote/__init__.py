"""``rewardkit vote``: human evaluation of two models, as the paper's preference study.

- :mod:`~rewardkit.vote.study`: the two models, prompts and seeds; images sampled ahead with
  ``rewardkit eval``'s sampling;
- :mod:`~rewardkit.vote.log`: the votes file (JSONL, appended as votes are cast, crash-safe,
  shared by several raters and servers);
- :mod:`~rewardkit.vote.session`: which pair a rater sees next, sides, recording (plain Python);
- :mod:`~rewardkit.vote.page`: the gradio page around the session.
"""
