"""The vision tower, in the order an image goes through it (notebooks 03-05).

- ``resize``: the token budget of a resized image (the resize plan itself is ``anatomy.processor.resize_plan``).
- ``patches``: pixels to rows of 1176 values, the Conv3d patch embedding as one Linear.
- ``video``: frames sampled, paired in time, and patched like an image.
- ``rotary``: the 2D (row, column) rotary embedding.
- ``windows``: 112-px windows and the blocks that attend over the whole image.
- ``attention``: attention probabilities per block, recomputed beside any kernel.
- ``merger``: 2x2 patches into one decoder token.
"""
