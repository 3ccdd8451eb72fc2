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
    errors.csv              file (pseudonym of the path), code, reason: the codes of ingestion's quarantine.csv

Reading is ingestion's (:func:`mlvicx_monai.data.sources.read_source` on the files of
:func:`mlvicx_monai.data.walk.walk_tree`): the same header filter, memory bound per file (``max_pixel_mb``),
burned-in PHI checks (``BurnedInAnnotation = YES`` and text detected in the pixels: such images get no prediction,
heat map or overlay), and rejection codes.

De-identification: the id of an image is a keyed pseudonym (:class:`~mlvicx_monai.data.deid.Pseudonymizer`) of its
SOPInstanceUID (DICOM) or of the SHA-256 of its bytes (PNG, or a DICOM without SOPInstanceUID); no header value
and no path reaches ``predictions.csv``, ``errors.csv`` or a file name, and everything the job logs goes through a
:class:`~mlvicx_monai.data.phi_guard.PHIGuard`. ``errors.csv`` names files by
:func:`~mlvicx_monai.data.deid.file_pseudonym`; ``phi_path_map`` (opt-in, local, outside ``output_dir``) maps them
back to paths for the operator.

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

from mlvicx_monai.data.deid import Pseudonymizer, file_pseudonym
from mlvicx_monai.data.dicom import DEFAULT_MAX_PIXEL_BYTES, CXRDecodeError
from mlvicx_monai.data.ingest import cache_image
from mlvicx_monai.data.pacs import PacsFilter
from mlvicx_monai.data.phi_guard import PHIGuard
from mlvicx_monai.data.rejections import FileRejected, check_path_map, write_path_map, write_rejections
from mlvicx_monai.data.sources import SourcePolicy, read_source
from mlvicx_monai.data.walk import walk_tree
from mlvicx_monai.networks.artifacts import ArtifactError, ModelKind, load_model
from mlvicx_monai.utils.atomic import atomic_write, atomic_write_csv

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

_FILTER_HINT = "pass --filter_headers False to run the model on it anyway"
#: How the bundle changes each setting of :class:`~mlvicx_monai.data.sources.SourcePolicy` (appended to reasons).
INFER_HINTS: dict[str, str] = {
    **{k: _FILTER_HINT for k in ("modalities", "body_parts", "views", "allow_missing_body_part", "allow_missing_view",
                                 "allow_for_processing")},
    "allow_burned_in": "pass --allow_burned_in True only if the pixel text is known to carry no PHI",
    "detect_burned_in_text": "a false alarm? --detect_burned_in_text False turns the detector off, "
                             "--allow_burned_in True keeps every image with pixel text",
}

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
        new_secret: create ``deid_secret`` if it does not exist (otherwise a missing named secret is an error).
        allow_burned_in: also run on images whose header says ``BurnedInAnnotation = YES`` or whose pixels show text.
        detect_burned_in_text: look for burned-in text in the pixels.
        max_pixel_mb: memory bound per file: stored pixel data its header declares (0: none).
        phi_path_map: opt-in, local-only CSV (outside ``output_dir``) mapping each file pseudonym to its path.
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
        new_secret: bool = False,
        allow_burned_in: bool = False,
        detect_burned_in_text: bool = True,
        max_pixel_mb: float = DEFAULT_MAX_PIXEL_BYTES / 2**20,
        phi_path_map: str | os.PathLike = "",
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
        self.policy = SourcePolicy(
            header_filter=PacsFilter() if filter_headers else None,
            accept_png=True,
            allow_burned_in=bool(allow_burned_in),
            detect_burned_in_text=bool(detect_burned_in_text),
            max_pixel_bytes=int(float(max_pixel_mb) * 2**20) if float(max_pixel_mb) > 0 else None,
            hints=INFER_HINTS,
        )
        self.phi_path_map = check_path_map(phi_path_map, [self.output_dir], [self.input_dir]) if phi_path_map else None
        self.save_heatmaps = save_heatmaps
        self.pseudo = Pseudonymizer.from_file(deid_secret or None, create=bool(new_secret), outputs=[self.output_dir])
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
    def _read(self, path: Path, guard: PHIGuard | None = None) -> tuple[_Image, str]:
        """(the decoded image, its pixel hash); rejections raise FileRejected / CXRDecodeError."""
        source = read_source(path, self.policy, guard)
        image_id = self.pseudo.pseudonym(source.instance, kind="image", length=20)
        return _Image(image_id, source.format, source.image, source.meta.pixel_spacing), source.pixel_sha256

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
                row.setdefault("_files", []).append(self.output_dir / "heatmaps" / name)
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
            "_files": [folder / f"{item.id}_{suffix}" for suffix in ("mask.png", "mask.nii.gz", "overlay.png")],
            "id": item.id,
            "format": item.format,
            f"max_prob:{name}": f"{float(prob.max()):.6f}",
            "mask_pixels": int(mask.sum()),
            "mask_fraction": f"{float(mask.mean()):.6f}",
        }

    # ---- the job ------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Process every file; write ``predictions.csv``, ``errors.csv`` and the images. Returns a summary."""
        guard = PHIGuard([self.input_dir])
        with guard.installed(trusted=(InputError,)):
            return self._run(guard)

    def _run(self, guard: PHIGuard) -> dict[str, Any]:
        try:
            walked = walk_tree(self.input_dir)
        except OSError as err:
            raise InputError(f"input_dir cannot be listed ({err.strerror or err}); check its permissions") from None
        if not walked.files and not walked.problems:
            raise InputError(f"{self.input_dir} holds no file")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        rows: dict[str, dict[str, Any]] = {}  # image id -> prediction row
        errors: list[tuple[str, str, str]] = [(file_pseudonym(self.pseudo, p.rel), p.code, p.reason) for p in walked.problems]
        done: dict[str, tuple[str, str]] = {}  # image id -> (file key, pixel hash) of the file it came from
        conflicted: set[str] = set()
        for rel in walked.files:
            key = file_pseudonym(self.pseudo, rel)
            path = self.input_dir / rel
            with guard.file(path, rel, key):
                try:
                    item, pixels = self._read(path, guard)
                    if item.id in conflicted or (item.id in done and done[item.id][1] != pixels):
                        raise FileRejected("conflicting_resend", "another file has this SOPInstanceUID with different "
                                           "pixels; neither is used: resolve the re-send at the PACS")
                    if item.id in done:
                        raise FileRejected("duplicate", f"the same image (SOP instance and pixels) as file "
                                                        f"{done[item.id][0]}, processed once")
                    display = self.display_image(item.image)
                    x = self.network_input(display)
                    row = self._classify(item, x, display) if self.kind == "classifier" else self._segment(item, x)
                    done[item.id] = (key, pixels)
                    rows[item.id] = row
                except (CXRDecodeError, FileRejected) as err:
                    if err.code == "conflicting_resend" and item.id not in conflicted:
                        self._withdraw(rows.pop(item.id))  # the first copy's outputs may show the wrong pixels
                        errors.append((done[item.id][0], err.code, err.reason))
                        conflicted.add(item.id)
                    errors.append((key, err.code, err.reason))
                except Exception as err:  # one bad file never stops the job; the message goes through the guard
                    errors.append((key, "internal_error", guard.scrub(f"{type(err).__name__}: {err}")[:300]))
                    logger.warning("internal error on file %s (%s)", key, type(err).__name__)
        predictions = [{k: v for k, v in row.items() if k != "_files"} for row in rows.values()]  # file order
        atomic_write_csv(self.output_dir / "predictions.csv", predictions, header=None if predictions else ["id"])
        write_rejections(self.output_dir / "errors.csv", errors)
        if self.phi_path_map is not None:
            codes = {key: code for key, code, _ in errors}
            entries = [(file_pseudonym(self.pseudo, rel), rel) for rel in [*walked.files, *(p.rel for p in walked.problems)]]
            write_path_map(self.phi_path_map, [(key, codes.get(key, "processed"), rel) for key, rel in entries])
            logger.warning("wrote the source path of every file (PHI) to the local map %s", self.phi_path_map)
        n_files = len(walked.files) + len(walked.problems)
        self.summary = {"files": n_files, "images": len(predictions), "errors": len(errors), "kind": self.kind,
                        "output_dir": str(self.output_dir)}
        logger.info("inference: %d files, %d images processed, %d listed in errors.csv", n_files, len(predictions),
                    len(errors))
        return self.summary

    @staticmethod
    def _withdraw(row: dict[str, Any]) -> None:
        for path in row.get("_files", ()):
            Path(path).unlink(missing_ok=True)
