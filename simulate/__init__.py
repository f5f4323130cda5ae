"""mld's molecular-dynamics engine: the lower layer.

It runs any kernel module that follows the generated-kernel interface
(see :mod:`simulate.kernels`) and knows nothing of symbolic regression.
"""
