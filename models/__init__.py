"""The tier models: committed LiteRT files, their manifest, evaluation and (optionally) training."""
