"""The gateway's web page: overview, machine pages, clips, thresholds, feedback and ``/metrics``.

Standard library only (``http.server``), served from its own threads. The pipeline
threads hand it data through ``MachineView`` (bounded deques and whole-value
assignments, never a lock the web side holds), so the audio path never waits on it.
See docs/web.md.
"""
