"""One batched loop per model family: text encoders (tokenising, length-sorted batches,
pooling), features (the cache, sharding, image features), vision backbones, CLIP and
SigLIP, the CPU image tower, decoders; and the graphs and bi-encoders built on them."""
