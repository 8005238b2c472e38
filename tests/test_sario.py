"SAR raster reading: every real image, every kind of file, every kind of bad file."
import numpy as np, pytest
from PIL import Image
from sarlang_nb.core import SarlangError
from sarlang_nb.sario import read_sar, read_raster, write_geotiff, find_images, POLS

def test_reads_every_real_sar_image(shared_data):
    imgs = find_images(shared_data/"real_sar_det"/"images")
    assert len(imgs) == 43
    for p in imgs:
        r = read_raster(p)
        assert r.data.dtype == np.float32 and r.data.ndim == 3 and r.data.shape[0] == 1, p
        assert r.domain == "intensity" and r.source == "display8"
        assert np.isfinite(r.data).all() and 0 <= r.data.min() and r.data.max() <= 1
        assert min(r.shape) >= 600  # HRSID chips are 800x800, SAR-AIRcraft 800-1500 px

def test_refined_lee_input_convention(shared_data):
    "The conformance vector's input is (gray/255)^2 of the HRSID PNG's central crop: our reader gives exactly that."
    src = shared_data/"real_sar_det"/"images"
    png = [p for p in find_images(src) if p.name.startswith("P0094_0_800_3000_3800")]
    if not png: pytest.skip("P0094 chip not in the sample")
    ref = np.load(shared_data/"refined_lee_vectors"/"input_P0094_512_intensity.npy")
    np.testing.assert_allclose(read_sar(png[0])[144:656, 144:656], ref, rtol=1e-6)

def test_quad_pol_and_domains(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.gamma(2.0, 0.5, (4, 32, 40)).astype(np.float32)
    write_geotiff(tmp_path/"q.tif", a, bands=POLS)
    for i, pol in enumerate(POLS):
        np.testing.assert_array_equal(read_sar(tmp_path/"q.tif", pol=pol), a[i])
    np.testing.assert_allclose(read_sar(tmp_path/"q.tif", pol="VV", domain="amplitude"), np.sqrt(a[3]), rtol=1e-6)
    assert read_sar(tmp_path/"q.tif").shape == (4, 32, 40)
    with pytest.raises(SarlangError, match=r"q\.tif: no band 'XX'"): read_sar(tmp_path/"q.tif", pol="XX")
    write_geotiff(tmp_path/"a.tif", np.sqrt(a[0]), bands=["HH"], domain="amplitude")
    np.testing.assert_allclose(read_sar(tmp_path/"a.tif"), a[0], rtol=1e-5)
    # identical bytes for identical input (no timestamps)
    write_geotiff(tmp_path/"q2.tif", a, bands=POLS)
    assert (tmp_path/"q.tif").read_bytes() == (tmp_path/"q2.tif").read_bytes()

def test_16bit_and_rgb_as_gray(tmp_path):
    g = (np.arange(64*64).reshape(64, 64) * 13 % 65536).astype(np.uint16)
    Image.fromarray(g).save(tmp_path/"g16.png")
    np.testing.assert_allclose(read_sar(tmp_path/"g16.png", domain="amplitude"), g/65535.0, rtol=1e-6)
    g8 = (np.arange(64*64).reshape(64, 64) % 256).astype(np.uint8)
    Image.fromarray(np.stack([g8]*3, -1)).save(tmp_path/"rgb.jpg", quality=100)
    assert read_sar(tmp_path/"rgb.jpg").shape == (64, 64)

@pytest.mark.parametrize("name,content,msg", [
    ("empty.png", b"", "empty file"),
    ("junk.bmp", b"BMnot really", "junk.bmp"),
    ("junk.tif", b"II*\x00garbage", "junk.tif"),
])
def test_bad_files_name_the_file(tmp_path, name, content, msg):
    (tmp_path/name).write_bytes(content)
    with pytest.raises(SarlangError, match=msg): read_sar(tmp_path/name)

def test_bad_values_reported_not_clipped(tmp_path):
    a = np.ones((8, 8), np.float32); a[0, :2] = np.inf
    write_geotiff(tmp_path/"inf.tif", a)
    with pytest.raises(SarlangError, match="2 non-finite"): read_sar(tmp_path/"inf.tif")
    assert np.isinf(read_sar(tmp_path/"inf.tif", check=False)).sum() == 2
    b = np.ones((8, 8), np.float32); b[3, 3] = -1
    write_geotiff(tmp_path/"neg.tif", b)
    with pytest.raises(SarlangError, match="1 negative intensity"): read_sar(tmp_path/"neg.tif")
    with pytest.raises(SarlangError, match="file not found"): read_sar(tmp_path/"nope.png")

def test_gray_alpha_palette_and_bilevel_png(tmp_path):
    # a grey PNG with an alpha channel (LA), a palette PNG (P) with a non-identity grey palette and a bilevel PNG
    # (mode 1) are read as their grey levels: alpha is not averaged in, palette indices are not grey levels
    g = (np.arange(20*30).reshape(20, 30) % 256).astype(np.uint8)
    Image.fromarray(np.stack([g, np.full_like(g, 255)], -1), "LA").save(tmp_path/"la.png")
    np.testing.assert_allclose(read_sar(tmp_path/"la.png", domain="amplitude"), g/255.0, rtol=1e-6)
    idx = (np.arange(20*30).reshape(20, 30) % 4).astype(np.uint8)
    levels = np.array([0, 60, 120, 250], np.uint8)
    p = Image.fromarray(idx, "P"); p.putpalette(np.repeat(levels, 3).tolist()); p.save(tmp_path/"p.png")
    np.testing.assert_allclose(read_sar(tmp_path/"p.png", domain="amplitude"), levels[idx]/255.0, rtol=1e-6)
    b = (np.arange(20*30).reshape(20, 30) % 2).astype(bool)
    Image.fromarray(b).save(tmp_path/"b.png")
    np.testing.assert_allclose(read_sar(tmp_path/"b.png", domain="amplitude"), b.astype(np.float32), rtol=1e-6)

def test_rgb_tiff_is_grey_like_rgb_png(tmp_path):
    # an 8-bit R=G=B TIFF chip is the same display image as the R=G=B PNG/JPG chips: one grey band, not three
    import tifffile
    g = (np.arange(40*50).reshape(40, 50) % 256).astype(np.uint8)
    tifffile.imwrite(tmp_path/"rgb.tif", np.stack([g]*3, -1), photometric="rgb")
    Image.fromarray(np.stack([g]*3, -1)).save(tmp_path/"rgb.png")
    r = read_raster(tmp_path/"rgb.tif")
    assert (r.bands, r.source) == (["band0"], "display8")
    np.testing.assert_array_equal(read_sar(tmp_path/"rgb.tif"), read_sar(tmp_path/"rgb.png"))
    c = np.stack([g, g // 2, g // 4], -1)                                  # a colour TIFF: averaged to grey, like a PNG
    tifffile.imwrite(tmp_path/"c.tif", c, photometric="rgb"); Image.fromarray(c).save(tmp_path/"c.png")
    np.testing.assert_allclose(read_sar(tmp_path/"c.tif"), read_sar(tmp_path/"c.png"), rtol=1e-6)
    write_geotiff(tmp_path/"q.tif", np.ones((3, 16, 16), np.float32), bands=["HH", "HV", "VV"])   # float stacks stay bands
    assert read_raster(tmp_path/"q.tif").bands == ["HH", "HV", "VV"]


def test_tiff_band_layouts_follow_the_file_axes(tmp_path):
    "Band axis from the TIFF's own axes, not guessed from the shape: small chips, many bands, one page per band."
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path/"rgb.tif", np.full((8, 8, 3), 200, np.uint8), photometric="rgb")
    r = read_raster(tmp_path/"rgb.tif")
    assert (len(r.bands), r.shape) == (1, (8, 8))                        # a grey RGB chip is one band of 8 x 8
    stack = np.arange(64 * 64 * 12, dtype=np.float32).reshape(64, 64, 12)
    tifffile.imwrite(tmp_path/"ts.tif", stack, photometric="minisblack", planarconfig="contig")
    got = read_sar(tmp_path/"ts.tif")
    assert got.shape == (12, 64, 64) and np.array_equal(got[5], stack[..., 5])
    dual = np.stack([np.full((4, 4), 1, np.float32), np.full((4, 4), 2, np.float32)], -1)
    tifffile.imwrite(tmp_path/"dual.tif", dual, photometric="minisblack", planarconfig="contig")
    assert read_sar(tmp_path/"dual.tif").shape == (2, 4, 4)
    with tifffile.TiffWriter(tmp_path/"pages.tif") as w:
        for v in (1, 2, 3, 4): w.write(np.full((32, 32), v, np.float32), photometric="minisblack")
    got = read_sar(tmp_path/"pages.tif", stored="amplitude")
    assert got.shape == (4, 32, 32) and [float(b[0, 0]) for b in got] == [1.0, 4.0, 9.0, 16.0]   # amplitude -> intensity


def test_find_images_skips_hidden_folders(tmp_path):
    for rel in ("a.png", "sub/b.png", ".ipynb_checkpoints/a-checkpoint.png", "sub/.cache/c.png", ".hidden.png"):
        (tmp_path/rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path/rel)
    assert [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)] == ["a.png", "sub/b.png"]

# ---------------------------------------------------------------- issue 17: sizes declared by headers, one reader rule
import struct, zlib, time
from sarlang_nb import sario

def huge_tiff_header(w=100000, h=100000):
    "A TIFF whose header claims w x h float32 pixels (37 GiB) while the file holds 16 bytes of data."
    tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 32), (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, 0),
            (277, 3, 1, 1), (278, 4, 1, h), (279, 4, 1, 16), (339, 3, 1, 3)]
    data_off = 8 + 2 + 12 * len(tags) + 4
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags))
    for t, typ, n, v in tags:
        v = data_off if t == 273 else v
        out += struct.pack("<HHI", t, typ, n) + (struct.pack("<HH", v, 0) if typ == 3 else struct.pack("<I", v))
    return out + struct.pack("<I", 0) + b"\x00" * 16

def bomb_png(w=100000, h=100000):
    "A PNG of a few hundred bytes whose header claims w x h grey pixels."
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))

def test_huge_tiff_header_refused_before_allocation(tmp_path):
    (tmp_path/"huge.tif").write_bytes(huge_tiff_header())
    t0 = time.perf_counter()
    with pytest.raises(SarlangError, match=r"huge\.tif: the header declares 100000 x 100000 = 10,000,000,000 samples, more than the limit"):
        read_raster(tmp_path/"huge.tif")
    assert time.perf_counter() - t0 < 5

def test_decompression_bomb_png_is_a_clear_error(tmp_path):
    (tmp_path/"bomb.png").write_bytes(bomb_png())
    with pytest.raises(SarlangError, match=r"bomb\.png: .*(decompression bomb|more than the limit)"): read_sar(tmp_path/"bomb.png")
    (tmp_path/"big.png").write_bytes(bomb_png(9000, 9000))            # below Pillow's limits, above ours when lowered
    with pytest.raises(SarlangError, match="9000 x 9000"): read_sar(tmp_path/"big.png", max_pixels=10**7)

def test_size_limit_is_configurable(tmp_path, monkeypatch):
    a = np.ones((2, 40, 50), np.float32)
    write_geotiff(tmp_path/"s.tif", a, bands=["HH", "HV"])
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(tmp_path/"s.png")
    assert read_raster(tmp_path/"s.tif", max_pixels=4000).data.shape == (2, 40, 50)
    with pytest.raises(SarlangError, match="2 x 40 x 50 = 4,000 samples"): read_raster(tmp_path/"s.tif", max_pixels=3999)
    with pytest.raises(SarlangError, match="1 x 40 x 50 = 2,000"): read_raster(tmp_path/"s.png", max_pixels=1999)
    monkeypatch.setenv("SARLANG_MAX_PIXELS", "1000")
    with pytest.raises(SarlangError, match="limit of 1,000"): read_raster(tmp_path/"s.png")
    monkeypatch.setenv("SARLANG_MAX_PIXELS", "lots")
    with pytest.raises(SarlangError, match="SARLANG_MAX_PIXELS must be a positive number"): read_raster(tmp_path/"s.png")

def test_one_reader_rule_for_tiff_sample_types(tmp_path):
    "complex64 -> |z|, float16 -> float32, NaN and negative refused: the rule every command should read SAR through."
    import tifffile
    z = (np.arange(12, dtype=np.float32).reshape(3, 4) + 1j * 2).astype(np.complex64)
    tifffile.imwrite(tmp_path/"slc.tif", z)
    np.testing.assert_allclose(read_sar(tmp_path/"slc.tif", domain="amplitude"), np.abs(z), rtol=1e-6)
    h = (np.arange(12).reshape(3, 4) / 4).astype(np.float16)
    tifffile.imwrite(tmp_path/"h.tif", h)
    r = read_raster(tmp_path/"h.tif")
    assert r.data.dtype == np.float32 and r.source == "float"
    np.testing.assert_array_equal(r.data[0], h.astype(np.float32))
    for name, bad, msg in (("nan.tif", np.float32("nan"), "1 non-finite"), ("neg.tif", np.float32(-2), "1 negative")):
        a = np.ones((3, 4), np.float32); a[1, 1] = bad
        tifffile.imwrite(tmp_path/name, a)
        with pytest.raises(SarlangError, match=msg): read_sar(tmp_path/name)

def test_check_image_size_for_other_readers(tmp_path):
    "The header-only check any decoder can call first: same limit, same bomb refusal, nothing decoded."
    (tmp_path/"huge.tif").write_bytes(huge_tiff_header())
    (tmp_path/"bomb.png").write_bytes(bomb_png())
    with pytest.raises(SarlangError, match=r"huge\.tif: the header declares 1 x 100000 x 100000"): sario.check_image_size(tmp_path/"huge.tif")
    with pytest.raises(SarlangError, match=r"bomb\.png: refused as a possible decompression bomb"): sario.check_image_size(tmp_path/"bomb.png")
    assert sario.declared_shape(tmp_path/"huge.tif") == (1, 100000, 100000)
    write_geotiff(tmp_path/"q.tif", np.ones((4, 8, 9), np.float32), bands=list(POLS))
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(tmp_path/"rgb.png")
    assert sario.check_image_size(tmp_path/"q.tif") == (4, 8, 9) and sario.check_image_size(tmp_path/"rgb.png") == (3, 5, 7)
    (tmp_path/"junk.png").write_bytes(b"junk")
    with pytest.raises(SarlangError, match="junk.png: not a readable image"): sario.check_image_size(tmp_path/"junk.png")
