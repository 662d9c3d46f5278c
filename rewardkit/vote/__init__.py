"""``rewardkit vote``: human evaluation of two models, as the paper's preference study
(docs/human_eval.md).

- :mod:`~rewardkit.vote.study`: the two models, prompts and seeds; images sampled ahead with
  ``rewardkit eval``'s sampling;
- :mod:`~rewardkit.vote.log`: the votes file (JSONL, appended as votes are cast, crash-safe,
  shared by several raters and servers);
- :mod:`~rewardkit.vote.session`: which pair a rater sees next, sides, recording (plain Python);
  :mod:`~rewardkit.vote.display` the images as shown; :mod:`~rewardkit.vote.page` the gradio
  page around the session;
- :mod:`~rewardkit.vote.stats` and :mod:`~rewardkit.vote.report`: win rates with bootstrap
  intervals, rater and RM agreement, the markdown report;
- :mod:`~rewardkit.vote.export`: the votes as a preference set for the latent proxy RM;
- :mod:`~rewardkit.vote.simulate`: synthetic raters answering with a reward model;
- :mod:`~rewardkit.vote.cli`: the commands.
"""
