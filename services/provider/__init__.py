"""The image provider: a DashScope client, and a DashScope-compatible simulator."""
