"""Fetching inputs safely, decoding images and video with limits, encoding mp4.

Import the module you need (``omniflash.media.fetch``, ``.decode``, ``.encode``,
``.task_inputs``, ``.mp4check``): this package imports none of them itself, so that a
process needing only one of them loads no imaging library it does not use.  Reaching
a URL at all goes through ``omniflash.outbound``, which webhooks use too.
"""
