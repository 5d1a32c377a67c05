import torch

# The world's tensors are tiny: a second intra-op thread gains little, and on a
# loaded machine its barriers cost more than the work (seconds per call).
torch.set_num_threads(1)
