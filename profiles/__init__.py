"""Deployment profiles (one YAML per inference condition), shipped as package data: see eftnas_hw/resources.py."""
