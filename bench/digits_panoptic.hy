hyctas 1

# A small two-branch panoptic arch for the embedded digit scenes (validate it against
# archs/digits_space.hy): used by bench/bench_panoptic.py and docs/panoptic.md.
arch digits_panoptic {
  filters 4
  layers 6
  head (8, 16) output_stride 4
  task panoptic
  branch s8 {
    1..6 conv w12
  }
  branch s16 {
    1 conv w12
    2 conv w12 down
    3..6 conv w12
  }
  fuse s16 -> s8 after 5
}
