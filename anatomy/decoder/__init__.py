"""The language decoder (notebooks 06, 07, 10).

- ``mrope``: (time, height, width) position ids and the rotary bands they drive.
- ``gqa``: which key/value head each query head reads.
- ``attention``: attention probabilities of chosen rows, on the image and on text.
- ``logit_lens``: what each layer would predict through the final norm and ``lm_head``.
- ``generation``: ``generate`` traced token by token.
"""
