"""Inference on a folder of new radiographs (``bundles/infer.json``): predictions, Grad-CAM overlays, masks.

Input: any tree of DICOM and PNG files (a PACS export, with or without extensions, DICOMDIR and all). Every
regular file is tried; a file that cannot be used is listed in ``errors.csv`` with the reason and the rest are
processed. Outputs in ``output_dir``::

    predictions.csv         one row per image: de-identified id, format, ``prob:<class>`` per class and
                            ``findings`` (the top-k classes with probability >= min_probability);
                            segmenter: ``max_prob:<class>``, ``mask_pixels``, ``mask_fraction``
    heatmaps/<id>_<k>_<class>.png    classifier: Grad-CAM overlay of the k-th finding of ``findings``
    masks/<id>_mask.png     segmenter: 0/255 mask at the original image size (rows, columns)
    masks/<id>_mask.nii.gz  the same mask as NIfTI (nibabel; axes row, column; pixel spacing in mm in the
                            affine when the DICOM header gives it)
    masks/<id>_overlay.png  the mask over the image
    errors.csv              file (relative to input_dir, PHI redacted), file_key, code, reason

De-identification: the id of an image is a keyed pseudonym (:class:`~mlvicx_monai.data.deid.Pseudonymizer`) of its
SOPInstanceUID (DICOM) or of the SHA-256 of its bytes (PNG, or a DICOM without SOPInstanceUID); no header value
and no path reaches ``predictions.csv`` or a file name. ``errors.csv`` lists paths relative to ``input_dir`` with
every token of the PHI values read from the headers in the folder replaced by ``[PHI]`` (folders named after
patients), plus ``file_key``, a keyed pseudonym of the relative path that identifies the file to whoever holds
the secret.

Preprocessing reproduces training: the decoded image is resized to the side of the ingested cache the model was
trained from (PIL Lanczos, rounded to 8 bits, as :mod:`mlvicx_monai.data.ingest` does), then goes through the
bundle's transforms (antialiased bilinear resize to the model's ``image_size``, 8-bit quantisation,
``(x - mean) / std``).

Grad-CAM: MONAI's :class:`~monai.visualize.GradCAM` on the classifier's ``gradcam_target_layer`` (the refined
layer4 map). MONAI's default post-processing maps (min, max) to (1, 0), i.e. it *inverts* the map; here the map
is min-max scaled to (0, 1) instead so that bright means evidence for the class.

Model: a ``model.pt`` path, or a registered version (``models:/cxr-classifier-nih@champion``): see
:func:`resolve_model`.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose
from PIL import Image

from mlvicx_monai.data.deid import Pseudonymizer, phi_tokens, phi_values, redact
from mlvicx_monai.data.dicom import CXRDecodeError, decode_cxr, read_dicom
from mlvicx_monai.data.images import load_png, sniff_format
from mlvicx_monai.data.pacs import FileRejected, PacsFilter, check_header, is_dicomdir_name
from mlvicx_monai.data.ingest import cache_image
from mlvicx_monai.networks.artifacts import ArtifactError, ModelKind, load_model
from mlvicx_monai.utils.atomic import atomic_write, atomic_write_csv
from mlvicx_monai.utils.hashing import sha256_file

__all__ = [
    "DEMO_INPUT",
    "CXRInference",
    "InputError",
    "gradcam_normalizer",
    "heatmap_overlay",
    "input_folder",
    "prepare_input",
    "resolve_model",
]

logger = logging.getLogger(__name__)

#: ``input_dir`` value that selects the synthetic PACS export (generated on first use).
DEMO_INPUT = "demo"

class InputError(ValueError):
    """The input folder does not exist or holds no file."""


def resolve_model(model: str | os.PathLike, tracking_uri: str | None = None) -> Path:
    """Local path of the downstream model ``model`` names: a ``model.pt`` path, or a registered version
    (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/...``) fetched by
    :func:`mlvicx_monai.tracking.registry.download_model` from ``tracking_uri`` (``$MLFLOW_TRACKING_URI`` wins).

    Raises:
        ArtifactError: the path does not exist (with the command that makes the demo model).
        mlvicx_monai.tracking.registry.RegistryError: the URI cannot be resolved (unknown model, version or alias,
            an encoder instead of a downstream model, an unreachable server).
    """
    text = os.fspath(model).strip()
    if text.startswith(("models:/", "runs:/")):
        from mlvicx_monai.tracking.registry import download_model

        return download_model(text, tracking_uri=tracking_uri or None)
    path = Path(text)
    if not path.is_file():
        hint = (
            "train the demo classifier first: `python -m monai.bundle run --config_file bundles/mlvicx_cxr/configs/classify.json`"
            if path.parent.name == "classify"
            else "train one with the classify.json or segment.json bundle (they write output_dir/model.pt)"
        )
        raise ArtifactError(f"model {path} does not exist; {hint}")
    return path


def input_folder(input_dir: str | os.PathLike, demo_dir: str | os.PathLike) -> Path:
    """The folder to process: ``input_dir``, or for ``"demo"`` the synthetic export under ``demo_dir`` (no file is read
    or written: :func:`prepare_input` makes it)."""
    return Path(demo_dir) / "export" if os.fspath(input_dir) == DEMO_INPUT else Path(input_dir)


def prepare_input(input_dir: str | os.PathLike, demo_dir: str | os.PathLike, n_images: int = 16, seed: int = 0, size: int = 256) -> Path:
    """The folder to process: ``input_dir``, or for ``"demo"`` the synthetic PACS export under ``demo_dir``
    (``write_layout("pacs", ...)``: PHI in headers and folder names, broken and non-chest files), generated
    on first use.

    Raises:
        InputError: ``input_dir`` is not a folder.
    """
    if os.fspath(input_dir) == DEMO_INPUT:
        root = Path(demo_dir)
        export = root / "export"
        if not (root / "truth.json").is_file():
            from mlvicx_monai.data.phantom import write_layout

            logger.info("generating the synthetic PACS export (%d images) in %s", n_images, root)
            write_layout("pacs", root, n=n_images, seed=seed, size=size, overwrite=True)
        return export
    folder = Path(input_dir)
    if not folder.is_dir():
        raise InputError(f"input_dir {folder} is not a folder; pass a folder of DICOM or PNG files (any tree)")
    return folder


def gradcam_normalizer(x: torch.Tensor) -> torch.Tensor:
    """Per-map min-max scaling to [0, 1] (MONAI's ``default_normalizer`` maps to [1, 0], inverting the map)."""
    flat = x.flatten(1)
    lo = flat.min(dim=1).values.view(-1, *([1] * (x.ndim - 1)))
    hi = flat.max(dim=1).values.view(-1, *([1] * (x.ndim - 1)))
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def _safe(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z._-]+", "_", name).strip("_") or "class"


@dataclass
class _Image:
    id: str
    format: str
    image: np.ndarray  # float32 (rows, cols) in [0, 1]
    spacing: tuple[float, float] | None = None  # (row, column) mm


def heatmap_overlay(gray: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 of a grey image with a jet-coloured heat map (both (H, W), in [0, 1])."""
    from matplotlib import colormaps

    heat = np.clip(heat, 0, 1)
    colour = colormaps["jet"](heat)[..., :3]
    rgb = np.repeat(np.clip(gray, 0, 1)[..., None], 3, axis=2)
    weight = alpha * np.clip((heat - 0.2) / 0.8, 0, 1)[..., None]  # the image stays grey where evidence is weak
    return np.round((1 - weight) * rgb * 255 + weight * colour * 255).astype(np.uint8)


def _write_png(path: Path, array: np.ndarray) -> None:
    """``array`` (uint8, (H, W) grey or (H, W, 3) RGB) as a PNG at ``path``, written atomically."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    data = buffer.getvalue()
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _resize(array: np.ndarray, rows: int, cols: int, resample: Image.Resampling) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(array, dtype=np.float32)).resize((cols, rows), resample), dtype=np.float32)


class CXRInference:
    """Run a trained classifier or U-Net (``model.pt``) on every usable file under ``input_dir``.

    Args:
        input_dir: folder of DICOM/PNG files (any tree).
        model_path: a ``model.pt`` (see :func:`resolve_model`).
        output_dir: where the outputs go (see the module docstring).
        top_k: classifier: Grad-CAM overlays for the ``top_k`` most probable classes of each image ...
        min_probability: ... among those with a probability of at least this (a heat map of a finding the model
            does not see shows nothing meaningful).
        gradcam_layer: target layer of Grad-CAM; ``"auto"``: the classifier's ``gradcam_target_layer``.
        filter_headers: DICOM only: apply the PACS filter (frontal chest CR/DX; other modalities, laterals,
            non-chest images are listed in errors.csv instead of being classified).
        deid_secret: the pseudonymisation secret file ("" -> :func:`~mlvicx_monai.data.deid.default_secret_path`);
            it must lie outside ``output_dir``.
        device: torch device.
        save_heatmaps: write the Grad-CAM overlays.
    """

    def __init__(
        self,
        input_dir: str | os.PathLike,
        model_path: str | os.PathLike,
        output_dir: str | os.PathLike,
        top_k: int = 2,
        min_probability: float = 0.5,
        gradcam_layer: str = "auto",
        filter_headers: bool = True,
        deid_secret: str | os.PathLike = "",
        device: str | torch.device = "cpu",
        save_heatmaps: bool = True,
    ) -> None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k must be a non-negative integer, got {top_k!r}")
        self.input_dir = Path(input_dir)
        self.output_dir = Path(output_dir)
        self.device = torch.device(device)
        self.model, self.info = load_model(
            model_path, expect=(ModelKind.CLASSIFIER, ModelKind.SEGMENTER), map_location=self.device, require_preprocessing=True
        )
        self.kind = self.info.kind.value
        self.class_names = list(self.info.class_names)
        self.top_k = min(top_k, len(self.class_names))
        if not 0.0 <= float(min_probability) <= 1.0:
            raise ValueError(f"min_probability must be in [0, 1], got {min_probability!r}")
        self.min_probability = float(min_probability)
        self.gradcam_layer = self.model.gradcam_target_layer if gradcam_layer == "auto" and self.kind == "classifier" else gradcam_layer
        self.filter = PacsFilter() if filter_headers else None
        self.save_heatmaps = save_heatmaps
        self.pseudo = Pseudonymizer.from_file(deid_secret or None, outputs=[self.output_dir])
        self.preprocessing = self.info.preprocessing
        self.source_size = self.preprocessing.source_size
        self.threshold = self.info.threshold if self.info.threshold is not None else 0.5
        # the model's own chain after the ingestion step (the same factory its training bundle used)
        self.transform = Compose([*self.preprocessing.cached("image"), *self.preprocessing.runtime("image")])
        self._cam = None
        self.summary: dict[str, Any] = {}

    # ---- preprocessing ------------------------------------------------------------------------------
    def display_image(self, image: np.ndarray) -> np.ndarray:
        """The decoded image as ingestion cached it (:func:`~mlvicx_monai.data.ingest.cache_image`, the ingestion's own
        code) when the model records the cache side, else the decoded image; heat maps are drawn on it."""
        if self.source_size:
            return cache_image(image, int(self.source_size)).astype(np.float32) / np.float32(255.0)
        return image

    def network_input(self, display: np.ndarray) -> torch.Tensor:
        """:meth:`display_image`'s output -> network input ``[1, 1, S, S]``: the model's preprocessing chain after the
        ingestion step (:meth:`Preprocessing.cached` + :meth:`Preprocessing.runtime`), as in training."""
        x = self.transform({"image": torch.as_tensor(display, dtype=torch.float32)[None]})["image"]
        return x[None].to(self.device)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """Decoded image ``(rows, cols)`` in [0, 1] -> network input ``[1, 1, S, S]`` (as in training)."""
        return self.network_input(self.display_image(image))

    # ---- reading ----------------------------------------------------------------------------------------
    def _read(self, path: Path, seen_tokens: set[str]) -> _Image:
        kind = sniff_format(path)
        if kind == "png":
            image, _ = load_png(path)
            return _Image(self.pseudo.pseudonym(f"sha256:{sha256_file(path)}", kind="image", length=20), "png", image)
        if is_dicomdir_name(path.name):
            raise FileRejected("dicomdir", "a DICOMDIR index file, not an image (its images are read from their own files)")
        if kind != "dicom":
            raise FileRejected("not_an_image", "neither a DICOM nor a PNG file (judged by its content, not its name)")
        ds = read_dicom(path)
        seen_tokens.update(phi_tokens(phi_values(ds)))
        if self.filter is not None and "PixelData" in ds:
            rejection = check_header(ds, self.filter)
            if rejection is not None:
                reason = re.sub(r"\s*\(change with --[a-z-]+\)", "", rejection.reason)
                raise FileRejected(rejection.code, f"{reason} (pass --filter_headers false to run the model on it anyway)")
        image, meta = decode_cxr(ds, path)
        uid = str(ds.get("SOPInstanceUID", "") or "").strip()
        key = uid or f"sha256:{sha256_file(path)}"
        return _Image(self.pseudo.pseudonym(key, kind="image", length=20), "dicom", image, meta.pixel_spacing)

    # ---- model outputs ------------------------------------------------------------------------------
    def heatmap(self, x: torch.Tensor, class_idx: int, shape: tuple[int, int]) -> np.ndarray:
        """Grad-CAM of class ``class_idx`` for the network input ``x`` ``[1, 1, S, S]``, in [0, 1] (bright = evidence),
        resized to ``shape`` (rows, cols) of the displayed image."""
        if self.kind != "classifier":
            raise ValueError("Grad-CAM heat maps are for classifiers; a segmenter's output is its mask")
        if self._cam is None:
            from monai.visualize import GradCAM

            self._cam = GradCAM(nn_module=self.model, target_layers=self.gradcam_layer, postprocessing=gradcam_normalizer)
        heat = self._cam(x.detach().clone().requires_grad_(True), class_idx=int(class_idx))[0, 0].detach().cpu().numpy()
        return _resize(heat, shape[0], shape[1], Image.Resampling.BILINEAR)

    def _classify(self, item: _Image, x: torch.Tensor, display: np.ndarray) -> dict[str, Any]:
        with torch.no_grad():
            probs = torch.sigmoid(self.model(x))[0].float().cpu().numpy()
        row: dict[str, Any] = {"id": item.id, "format": item.format}
        row.update({f"prob:{c}": f"{p:.6f}" for c, p in zip(self.class_names, probs)})
        order = [k for k in np.argsort(-probs)[: self.top_k] if probs[k] >= self.min_probability]
        row["findings"] = ";".join(self.class_names[k] for k in order)
        if self.save_heatmaps:
            for rank, k in enumerate(order, start=1):
                heat = self.heatmap(x, int(k), display.shape)
                name = f"{item.id}_{rank}_{_safe(self.class_names[k])}.png"
                _write_png(self.output_dir / "heatmaps" / name, heatmap_overlay(display, heat))
        return row

    def _segment(self, item: _Image, x: torch.Tensor) -> dict[str, Any]:
        with torch.no_grad():
            prob = torch.sigmoid(self.model(x))[0, 0].float().cpu().numpy()
        rows, cols = item.image.shape
        prob_full = np.clip(_resize(prob, rows, cols, Image.Resampling.BILINEAR), 0, 1)
        mask = prob_full > float(self.threshold)
        folder = self.output_dir / "masks"
        folder.mkdir(parents=True, exist_ok=True)
        _write_png(folder / f"{item.id}_mask.png", mask.astype(np.uint8) * 255)
        import nibabel as nib

        spacing = item.spacing or (1.0, 1.0)  # mm when the header gives it, else pixels
        nifti = nib.Nifti1Image(mask.astype(np.uint8), affine=np.diag([spacing[0], spacing[1], 1.0, 1.0]))
        nifti.header.set_xyzt_units("mm" if item.spacing else "unknown")
        nifti_bytes = gzip.compress(nifti.to_bytes(), mtime=0)
        atomic_write(folder / f"{item.id}_mask.nii.gz", lambda tmp: tmp.write_bytes(nifti_bytes))
        _write_png(folder / f"{item.id}_overlay.png", heatmap_overlay(item.image, mask.astype(np.float32), alpha=0.4))
        name = self.class_names[0]
        return {
            "id": item.id,
            "format": item.format,
            f"max_prob:{name}": f"{float(prob.max()):.6f}",
            "mask_pixels": int(mask.sum()),
            "mask_fraction": f"{float(mask.mean()):.6f}",
        }

    # ---- the job ------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Process every file; write ``predictions.csv``, ``errors.csv`` and the images. Returns a summary."""
        files = sorted(p for p in self.input_dir.rglob("*") if p.is_file())
        if not files:
            raise InputError(f"{self.input_dir} holds no file")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        seen_tokens: set[str] = set()
        rows: list[dict[str, Any]] = []
        errors: list[tuple[str, str, str, str]] = []
        done: dict[str, str] = {}
        for path in files:
            rel = path.relative_to(self.input_dir).as_posix()
            file_key = self.pseudo.pseudonym(rel, kind="file", length=16)
            try:
                item = self._read(path, seen_tokens)
                if item.id in done:
                    raise FileRejected("duplicate", f"the same image (same SOPInstanceUID or bytes) as image {item.id}, processed once")
                display = self.display_image(item.image)
                x = self.network_input(display)
                row = self._classify(item, x, display) if self.kind == "classifier" else self._segment(item, x)
                done[item.id] = rel
                rows.append(row)
            except (CXRDecodeError, FileRejected) as err:
                errors.append((rel, file_key, err.code, err.reason))
            except Exception as err:  # one bad file never stops the job; no traceback or absolute path in the CSV
                message = str(err).splitlines()[0] if str(err) else ""
                message = message.replace(str(path), rel).replace(str(self.input_dir), "<input_dir>")
                errors.append((rel, file_key, "internal_error", f"{type(err).__name__}: {message}"[:300]))
                logger.warning("internal error on file %s (%s)", file_key, type(err).__name__)
        digests = {self._digest(t) for t in seen_tokens}

        def is_phi(token: str) -> bool:
            return self._digest(token) in digests

        errors = [(redact(rel, is_phi), key, code, redact(reason, is_phi)) for rel, key, code, reason in errors]
        atomic_write_csv(self.output_dir / "predictions.csv", rows, header=None if rows else ["id"])
        atomic_write_csv(self.output_dir / "errors.csv", sorted(errors), header=["file", "file_key", "code", "reason"])
        self.summary = {"files": len(files), "images": len(rows), "errors": len(errors), "kind": self.kind,
                        "output_dir": str(self.output_dir)}
        logger.info("inference: %d files, %d images processed, %d listed in %s", len(files), len(rows), len(errors),
                    self.output_dir / "errors.csv")
        return self.summary

    def _digest(self, token: str) -> str:
        return self.pseudo.pseudonym(token, kind="token", length=32)
