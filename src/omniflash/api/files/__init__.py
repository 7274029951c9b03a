"""Blobs over HTTP: signed result and upload downloads (``downloads``) and the upload
endpoint whose URLs a submit may name (``uploads``; the API's ``intake`` makes such an
upload a task's own input)."""
