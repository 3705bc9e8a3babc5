"""The one reconcile shell around the planner, over a small interface to the world (`World`): the Kubernetes API
for the operator (gradatim/operator/world.py), memory for `gradatim run` (gradatim/local/world.py)."""
