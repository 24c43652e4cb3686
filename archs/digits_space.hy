hyctas 1

# The search space of the embedded demo: the paper's space (paper_space.hy) scaled down so
# that training a supernet and searching it takes minutes on a 2-core CPU. Scenes are 64x64
# composites of scikit-learn's bundled digits, so stride 32 is a 2x2 map.
space digits {
  filters 4
  layers 6
  strides 8 16 32
  ops skip conv zconv zconv2 attn
  widths 4 6 8 10 12
  # eq. 2: sub-networks with more branches are sampled more often
  branch_prior 0.2 0.3 0.5
  heads (8) (16) (32) (8, 16) (8, 32) (8, 16, 32)
  output_strides 8 4
  memory 2 GiB batch 16 crop 64x64
}
