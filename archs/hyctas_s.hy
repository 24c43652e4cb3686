hyctas 1

# HyCTAS-S as released by the authors (HRNET_S in their retraining code, 2024-03): one
# branch, 11 layers, final stride 32. Filter multiplier 12 and output stride 8 as in the
# paper's section 4.2. Transcribed from shared/reference/released-models.md.
arch hyctas_s {
  filters 12
  layers 11
  head (32) output_stride 8
  branch main {
    1 zconv2 w8
    2 zconv w8 down
    3 zconv w8
    4 conv w4 down
    5 zconv w8
    6 attn w10
    7 conv w4
    8 zconv2 w10
    9 zconv2 w4
    10 zconv w8
    11 zconv2 w12
  }
}
