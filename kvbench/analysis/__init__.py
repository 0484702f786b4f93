"""What the stored runs mean: the roofline bound, fits against length, explanations, which KV cache to use.
Pure, computed where shown."""
