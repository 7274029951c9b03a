"""Task events over HTTP: the SSE routes (``routes``), one stream (``streams``), and the
process's hub that wakes the streams when their key's tasks have news (``hub``)."""
