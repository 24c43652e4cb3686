hyctas 1

# HyCTAS-L as released by the authors (HRTNet_L in their retraining code, 2024-03): three
# branches, 20 layers, final strides 8, 16 and 32, all cells at full width. Filter multiplier
# 16 and output stride 4 as in the paper's section 4.2. The released files have no fusion
# gates; the branches share their identical first layers (computed once by the compiler).
# Transcribed from shared/reference/released-models.md.
arch hyctas_l {
  filters 16
  layers 20
  head (8, 16, 32) output_stride 4
  branch s8 {
    1..16 conv w12
    17..19 zconv2 w12
    20 attn w12
  }
  branch s16 {
    1..8 conv w12
    9 zconv2 w12
    10 conv w12 down
    11..17 conv w12
    18 zconv2 w12
    19 zconv2 w12
    20 attn w12
  }
  branch s32 {
    1..4 conv w12
    5 zconv2 w12
    6 conv w12 down
    7..10 conv w12
    11 zconv2 w12
    12 conv w12 down
    13..17 conv w12
    18 zconv2 w12
    19 zconv2 w12
    20 attn w12
  }
}
