"""Class palettes for label PNGs."""


def voc_palette(num_colors=256):
    """The PASCAL VOC colour map as a flat list of 768 ints (index 255 included).

    Colour of index i: the bits of i are spread over the high bits of R, G, B in turn.
    """
    palette = []
    for index in range(num_colors):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.extend((r, g, b))
    return palette + [0] * (768 - len(palette))
