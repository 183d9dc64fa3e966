"""The image worker and the reconciler that re-dispatches images nothing is working on."""
