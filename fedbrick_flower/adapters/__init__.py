"""Adapter modules and their state under canonical names. No Flower imports."""
