"""The worker protocol's server side: ``/worker/v1`` for remote GPU workers (``routes``)
and the bodies they send (``bodies``)."""
