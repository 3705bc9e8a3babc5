"""Prometheus and Grafana artifacts for Gradatim: the dashboard, the scrape monitors and the alert rules."""
