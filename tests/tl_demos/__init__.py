"""TransformerLens tutorials ported to interp.tl (run by tests/test_tl_demo.py); harness.py and record.py."""
