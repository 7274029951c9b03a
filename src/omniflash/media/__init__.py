"""Fetching inputs safely, decoding images and video with limits, encoding mp4.

Import the module you need (``omniflash.media.fetch``, ``.decode``, ``.encode``,
``.inputs``): this package imports none of them itself, so that a process needing only
the safe fetcher (an API replica sending webhooks) loads no imaging library.
"""
