"""On-device test-time adaptation baselines, each a page of plain functions in the style of Tent's tent.py."""
