"""S3, shared by the trainer (outputs, checkpoints, run files), the reconcile shell (reading run files) and the
report: URIs, clients, small JSON objects, and what a failed request means for the stage."""
