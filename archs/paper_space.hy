hyctas 1

# The HyCTAS search space: paper sections 3.2-3.4 and 4.2, DESIGN.md "The model".
# The search settings of the paper are options of `hyctas train-supernet` and `hyctas search`:
#   supernet: SGD momentum 0.9, weight decay 5e-4, lr 0.02 with exponential decay 0.992,
#             batch 16 of 256x512 crops, one subnet sampled per step (120 V100 hours)
#   NSGA-II:  population 40, 20 generations, crossover 0.9, mutation 0.02, one search per
#             branch count (2400 candidates in all)
space paper {
  # 8F = 64 channels at stride 8 in the supernet (section 4.2); 12 and 16 for retraining
  filters 8 12 16
  # the released models use 11, 17 and 20 layers
  layers 20
  strides 8 16 32
  ops skip conv zconv zconv2 attn
  widths 4 6 8 10 12
  # eq. 2: sub-networks with more branches are sampled more often
  branch_prior 0.2 0.3 0.5
  heads (8) (16) (32) (8, 16) (8, 32) (8, 16, 32)
  output_strides 8 4
  # constraint 4 at the paper's supernet batch and crop on one V100 (32 GB)
  memory 32 GiB batch 16 crop 256x512
}
