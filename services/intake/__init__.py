"""Inbound task events: validation and the ``task.created`` / ``task.cancel`` handler."""
