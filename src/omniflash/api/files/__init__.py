"""Blobs over HTTP: signed result and preview downloads (``downloads``) and the upload
endpoint whose URLs a submit may name (``uploads``)."""
