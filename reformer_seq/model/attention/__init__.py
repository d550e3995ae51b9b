"""Attention, from the layer down: the layer (layer), LSH hashing and bucket layout (lsh), the local
window layout (local), attention over a layout in PyTorch (chunked) and its compiled twin
(kernel, csrc/), dense exact attention (exact), and copy attention (copy_attention)."""
