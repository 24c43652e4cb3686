hyctas 1

# HyCTAS-M as released by the authors (HRNET_M in their retraining code, 2024-03): one
# branch, 17 layers, final stride 32. The released files do not store the filter multiplier;
# 12 is assumed (as for HyCTAS-S). Output stride 4, as the paper's larger models (section 4.2).
# Transcribed from shared/reference/released-models.md.
arch hyctas_m {
  filters 12
  layers 17
  head (32) output_stride 4
  branch main {
    1 zconv w8
    2 zconv w6 down
    3 zconv2 w12
    4 conv w10
    5 conv w10
    6 conv w8
    7 zconv w10
    8 attn w8
    9 conv w8
    10 conv w10
    11 zconv w10
    12 zconv2 w12
    13 zconv w12
    14 attn w6
    15 zconv w8
    16 conv w6 down
    17 zconv w12
  }
}
