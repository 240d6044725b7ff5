"""Command-line tools beside the layers: demo (main job), train_compact, bench / eval_spatial, record_bag."""
