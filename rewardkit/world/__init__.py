"""The embedded default world: procedural images and captions, a tiny teacher, and its judges.

Everything the paper does happens here for real at laptop scale: ``rewardkit run rg-lcd`` with no
arguments distils the shipped world teacher with reward guidance from the world's judge.
"""
