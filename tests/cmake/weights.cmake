# Checkpoint loading and writing (owner: weights). Unit tests register themselves.
sd3_test(test_layouts golden/test_layouts.c LABELS golden TIMEOUT 120)
