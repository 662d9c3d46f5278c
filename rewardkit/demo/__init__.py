"""``rewardkit demo``: a local page to try a student beside its teacher.

:class:`~rewardkit.demo.session.DemoSession` samples and scores (no web dependency);
:func:`~rewardkit.demo.page.build_page` puts it on a gradio page.
"""
