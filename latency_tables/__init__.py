"""Measured latency tables, one folder per CPU, shipped as package data: see eftnas_hw/resources.py."""
