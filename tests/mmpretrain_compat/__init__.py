"""mmpretrain 1.2.0 backbone tests ported to mmbackbone (see conftest.py)."""
