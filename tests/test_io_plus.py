"""usnav.io.plus: PLUS sequences, configs, MetaImage volumes; usnav.io.nifti."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from usnav.errors import InputError
from usnav.io.plus import frame_transforms, read_config, read_metaimage, read_sequence, write_metaimage, write_sequence

CONFIG = """<PlusConfiguration version="2.1">
  <CoordinateDefinitions>
    <Transform From="Image" To="Probe" Matrix="0.1 0 0 1  0 0.1 0 2  0 0 0.1 3  0 0 0 1"/>
  </CoordinateDefinitions>
  <VolumeReconstruction OutputSpacing="0.5 0.5 0.5" ClipRectangleOrigin="2 3" ClipRectangleSize="10 8"
    FanAnglesDeg="-30 30" FanOriginPixel="8 0" FanRadiusStartPixel="2" FanRadiusStopPixel="12"
    Interpolation="LINEAR" CompoundingMode="LATEST" FillHoles="ON">
    <HoleFilling>
      <HoleFillingElement Type="GAUSSIAN" Size="3" Stdev="0.7" MinimumKnownVoxelsRatio="0.1"/>
      <HoleFillingElement Type="STICK" StickLengthLimit="5" NumberOfSticksToUse="2"/>
    </HoleFilling>
  </VolumeReconstruction>
</PlusConfiguration>
"""


def _rigid(rng, n):
    from usnav.geometry import matrix_from_params

    p = np.concatenate([rng.normal(0, 0.3, (n, 3)), rng.normal(0, 20, (n, 3))], axis=1)
    return matrix_from_params(p)


def test_sequence_round_trip_compressed_and_flipped(tmp_path, rng):
    frames = rng.integers(0, 256, (3, 5, 7), dtype=np.uint8)
    probe = _rigid(rng, 3)
    ref = _rigid(rng, 3)
    valid = {"ProbeToTracker": np.array([True, False, True])}
    p = write_sequence(tmp_path / "s.igs.mha", frames, {"ProbeToTracker": probe, "ReferenceToTracker": ref}, transform_valid=valid)
    s = read_sequence(p)
    assert s.frames.shape == (3, 5, 7) and np.array_equal(s.frames, frames)
    assert np.allclose(s.transforms["ProbeToTracker"], probe, atol=1e-8)
    assert s.transform_valid["ProbeToTracker"].tolist() == [True, False, True]
    assert s.timestamps.tolist() == [0.0, 1.0, 2.0]
    # UN orientation: both axes flipped back to MF on reading
    q = write_sequence(tmp_path / "un.igs.mha", frames, {"ProbeToTracker": probe}, orientation="UN", compress=False)
    assert np.array_equal(read_sequence(q).frames, frames[:, ::-1, ::-1])


def test_frame_transforms_chain(tmp_path, rng):
    probe, ref = _rigid(rng, 2), _rigid(rng, 2)
    seq = read_sequence(write_sequence(tmp_path / "s.mha", np.zeros((2, 4, 4), np.uint8), {"ProbeToTracker": probe, "ReferenceToTracker": ref}))
    (tmp_path / "c.xml").write_text(CONFIG)
    cfg = read_config(tmp_path / "c.xml")
    T, valid = frame_transforms(seq, cfg)
    image_to_probe = cfg.coordinate_definitions[("Image", "Probe")]
    expected = np.linalg.inv(ref) @ probe @ image_to_probe
    assert valid.all()
    assert np.allclose(T, expected, atol=1e-6)


def test_config_fields(tmp_path):
    (tmp_path / "c.xml").write_text(CONFIG)
    r = read_config(tmp_path / "c.xml").reconstruction
    assert r.output_spacing == (0.5, 0.5, 0.5)
    assert r.clip_rectangle_origin == (2, 3) and r.clip_rectangle_size == (10, 8)
    assert r.fan_angles_deg == (-30.0, 30.0) and r.fan_origin_pixel == (8.0, 0.0)
    assert r.fan_radius_start_pixel == 2.0 and r.fan_radius_stop_pixel == 12.0
    assert r.interpolation == "LINEAR" and r.compounding_mode == "LATEST" and r.fill_holes
    assert [e.kind for e in r.hole_filling] == ["GAUSSIAN", "STICK"]
    assert r.hole_filling[1].number_of_sticks == 2


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[: len(b) - 50], "truncated"),
        (lambda b: b.replace(b"DimSize = 7 5 3", b"DimSize = 7 5"), "DimSize"),
        (lambda b: b.replace(b"UltrasoundImageOrientation = MF", b"UltrasoundImageOrientation = XY"), "Orientation"),
        (lambda b: b.replace(b"ElementDataFile = LOCAL\n", b""), "ElementDataFile"),
    ],
)
def test_bad_sequences(tmp_path, rng, mutate, message):
    frames = rng.integers(0, 256, (3, 5, 7), dtype=np.uint8)
    p = write_sequence(tmp_path / "s.mha", frames, {"ProbeToTracker": _rigid(rng, 3)}, compress=False)
    bad = tmp_path / "bad.mha"
    bad.write_bytes(mutate(p.read_bytes()))
    with pytest.raises(InputError, match=message):
        read_sequence(bad)


def test_corrupt_compressed_data(tmp_path, rng):
    frames = rng.integers(0, 256, (3, 5, 7), dtype=np.uint8)
    p = write_sequence(tmp_path / "s.mha", frames, {"ProbeToTracker": _rigid(rng, 3)})
    raw = p.read_bytes()
    head, _, data = raw.partition(b"ElementDataFile = LOCAL\n")
    (tmp_path / "bad.mha").write_bytes(head + b"ElementDataFile = LOCAL\n" + data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt or truncated"):
        read_sequence(tmp_path / "bad.mha")
    assert zlib.decompress(data).__len__() == frames.size


def test_non_rigid_tracker_transform(tmp_path, rng):
    probe = _rigid(rng, 2)
    probe[1, :3, :3] *= 1.5
    seq = read_sequence(write_sequence(tmp_path / "s.mha", np.zeros((2, 4, 4), np.uint8), {"ProbeToTracker": probe, "ReferenceToTracker": _rigid(rng, 2)}))
    (tmp_path / "c.xml").write_text(CONFIG)
    with pytest.raises(InputError, match="not rigid"):
        frame_transforms(seq, read_config(tmp_path / "c.xml"))


def test_missing_chain(tmp_path, rng):
    seq = read_sequence(write_sequence(tmp_path / "s.mha", np.zeros((2, 4, 4), np.uint8), {"ProbeToTracker": _rigid(rng, 2)}))
    (tmp_path / "c.xml").write_text(CONFIG)
    with pytest.raises(InputError, match="no chain of transforms from Image to Reference"):
        frame_transforms(seq, read_config(tmp_path / "c.xml"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("<PlusConfiguration><VolumeReconstruction/></PlusConfiguration>", "OutputSpacing"),
        ('<PlusConfiguration><VolumeReconstruction OutputSpacing="1 1 1" Interpolation="CUBIC"/></PlusConfiguration>', "Interpolation"),
        ('<PlusConfiguration><VolumeReconstruction OutputSpacing="1 1 1" FillHoles="ON"/></PlusConfiguration>', "HoleFilling"),
        ("<PlusConfiguration><oops></PlusConfiguration>", "not valid XML"),
        ('<PlusConfiguration><CoordinateDefinitions><Transform From="A" To="B" Matrix="1 2 3"/></CoordinateDefinitions></PlusConfiguration>', "16"),
    ],
)
def test_bad_configs(tmp_path, text, message):
    (tmp_path / "c.xml").write_text(text)
    with pytest.raises(InputError, match=message):
        read_config(tmp_path / "c.xml")


def test_metaimage_and_nifti_geometry_read_back(tmp_path, rng):
    import nibabel as nib
    import SimpleITK as sitk

    from usnav.compound import Volume, grid_matrix

    arr = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)  # (nx, ny, nz)
    T = grid_matrix(np.array([-10.25, 3.5, 7.0]), np.array([0.5, 0.25, 1.0]))
    vol = Volume(arr, T)
    for name in ("v.mha", "v.nii.gz"):
        p = vol.save(tmp_path / name)
        img = sitk.ReadImage(str(p))
        assert img.GetSize() == (6, 5, 4)
        assert np.allclose(img.GetOrigin(), [-10.25, 3.5, 7.0])
        assert np.allclose(img.GetSpacing(), [0.5, 0.25, 1.0])
        assert np.array_equal(sitk.GetArrayFromImage(img), arr.transpose(2, 1, 0))
    nimg = nib.load(str(tmp_path / "v.nii.gz"))
    assert np.allclose(nimg.affine, np.diag([-1, -1, 1, 1]) @ T)
    assert np.array_equal(np.asarray(nimg.dataobj), arr)
    back, h = read_metaimage(tmp_path / "v.mha")
    assert np.array_equal(back, arr.transpose(2, 1, 0)) and h["ElementSpacing"].split()[1] == "0.25"
    # no temporary files left behind
    assert sorted(x.name for x in tmp_path.iterdir()) == ["v.mha", "v.nii.gz"]


def test_write_metaimage_compressed(tmp_path, rng):
    a = rng.normal(size=(3, 4, 5)).astype(np.float32)
    write_metaimage(tmp_path / "f.mha", a, (1, 2, 3), (0, 0, 0), compress=True)
    b, _ = read_metaimage(tmp_path / "f.mha")
    assert np.array_equal(a, b)


def test_real_plus_sequence(plus_dir: Path):
    s = read_sequence(plus_dir / "SpinePhantomFreehand.igs.mha")
    assert s.frames.shape == (21, 616, 820) and s.frames.dtype == np.uint8
    assert {"ProbeToTracker", "ReferenceToTracker"} <= set(s.transforms)
    b = read_sequence(plus_dir / "BoneUltrasound_L14.igs.mha")
    assert b.n_frames == 21 and b.orientation == "MF"
