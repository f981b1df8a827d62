"""The whole model at a glance (notebooks 01-02).

- ``structure``: the module tree, today's beside transformers 4.49's, and what moved.
- ``parameters``: where the parameters live, memory per dtype, torchinfo's double count.
- ``tokens``: the added tokens, a prompt token by token, what an image costs.
- ``residuals``: the residual stream's size after every vision block and decoder layer.
"""
