"""Inference on a folder of new radiographs (``inference.json``): predictions, Grad-CAM overlays, masks.

The bundle is MONAI's inference workflow: ``dataset`` is a :class:`RadiographFolder` (every file of the tree, read as
ingestion reads it), ``evaluator`` a :class:`CXRInference` (a MONAI ``SupervisedEvaluator``, one file per iteration,
``inferer`` for the forward pass) and ``network_def`` the architecture recorded in the model file.

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

Preprocessing is the training chain, rebuilt from the :class:`~mlvicx_monai.transforms.preprocessing.Preprocessing`
record stored in the model file: the decoded image is cached as ingestion caches it
(:func:`mlvicx_monai.data.ingest.cache_image`, the ingestion's own function), then goes through the very transforms the
training bundle used (``Preprocessing.cached()`` and ``Preprocessing.runtime()``).

Grad-CAM: MONAI's :class:`~monai.visualize.GradCAM` on the classifier's ``gradcam_target_layer`` (the refined
layer4 map). MONAI's default post-processing maps (min, max) to (1, 0), i.e. it *inverts* the map; here the map
is min-max scaled to (0, 1) instead so that bright means evidence for the class.

Model: a ``model.pt`` path, or a registered version (``models:/cxr-classifier-nih@champion``): see
:func:`resolve_model`.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import Dataset
from monai.engines import SupervisedEvaluator
from monai.inferers import Inferer, SimpleInferer
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
from mlvicx_monai.networks.artifacts import ArtifactError, ArtifactInfo, ModelKind, load_model
from mlvicx_monai.utils.atomic import atomic_write, atomic_write_csv

__all__ = [
    "DEMO_INPUT",
    "CXRInference",
    "RadiographFolder",
    "InputError",
    "gradcam_normalizer",
    "heatmap_overlay",
    "input_folder",
    "prepare_input",
    "resolve_model",
    "source_policy",
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
            "train the demo classifier first: "
            "`python -m monai.bundle run --config_file bundles/mlvicx_cxr/configs/classify.json`"
            if path.parent.name == "classify"
            else "train one with the classify.json or segment.json bundle (they write output_dir/model.pt)"
        )
        raise ArtifactError(f"model {path} does not exist; {hint}")
    return path


def input_folder(input_dir: str | os.PathLike, demo_dir: str | os.PathLike) -> Path:
    """The folder to process: ``input_dir``, or for ``"demo"`` the synthetic export under ``demo_dir`` (no file is read
    or written: :func:`prepare_input` makes it)."""
    return Path(demo_dir) / "export" if os.fspath(input_dir) == DEMO_INPUT else Path(input_dir)


def prepare_input(
    input_dir: str | os.PathLike, demo_dir: str | os.PathLike, n_images: int = 16, seed: int = 0, size: int = 256
) -> Path:
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
    picture = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32))
    return np.asarray(picture.resize((cols, rows), resample), dtype=np.float32)


def source_policy(
    filter_headers: bool = True,
    allow_burned_in: bool = False,
    detect_burned_in_text: bool = True,
    max_pixel_mb: float = DEFAULT_MAX_PIXEL_BYTES / 2**20,
) -> SourcePolicy:
    """Inference's reading policy: ingestion's (:class:`~mlvicx_monai.data.sources.SourcePolicy`), PNG accepted, with
    the inference bundle's options in the rejection hints.

    Args:
        filter_headers: DICOM only: apply the PACS filter (frontal chest CR/DX; other modalities, laterals, non-chest
            images are listed in errors.csv instead of being run through the model).
        allow_burned_in: also run on images whose header says ``BurnedInAnnotation = YES`` or whose pixels show text.
        detect_burned_in_text: look for burned-in text in the pixels.
        max_pixel_mb: memory bound per file: stored pixel data its header declares (0: none).
    """
    return SourcePolicy(
        header_filter=PacsFilter() if filter_headers else None,
        accept_png=True,
        allow_burned_in=bool(allow_burned_in),
        detect_burned_in_text=bool(detect_burned_in_text),
        max_pixel_bytes=int(float(max_pixel_mb) * 2**20) if float(max_pixel_mb) > 0 else None,
        hints=INFER_HINTS,
    )


class RadiographFolder(Dataset):
    """Every file under ``root`` (:func:`~mlvicx_monai.data.walk.walk_tree`: any tree, paths over PATH_MAX and
    unreadable folders included), read as ingestion reads it (:func:`~mlvicx_monai.data.sources.read_source`).

    Item ``i`` is ``{"key": file pseudonym, "rel": path relative to root}`` plus either the decoded image (``"id"``:
    keyed pseudonym of the SOP instance or of the pixels, ``"image"`` float32 ``(rows, cols)`` in [0, 1], ``"format"``,
    ``"spacing"`` (row, column) mm or None, ``"pixels"``: the pixel hash) or ``"error": (code, reason)``; a file never
    raises. :attr:`problems` lists what the walk itself could not read. The tree is walked on first use.

    Args:
        root: the input folder.
        policy: what is accepted (see :func:`source_policy`).
        pseudonymizer: the keyed pseudonyms of files and images.
        guard: the job's :class:`~mlvicx_monai.data.phi_guard.PHIGuard` (each read runs inside ``guard.file``).
    """

    def __init__(
        self, root: str | os.PathLike, policy: SourcePolicy, pseudonymizer: Pseudonymizer, guard: PHIGuard | None = None
    ) -> None:
        super().__init__(data=[])
        self.root = Path(root)
        self.policy, self.pseudo, self.guard = policy, pseudonymizer, guard
        self._walk = None

    @property
    def walked(self):
        """The :class:`~mlvicx_monai.data.walk.WalkResult` of :attr:`root`.

        Raises:
            InputError: the folder cannot be listed, or holds no file.
        """
        if self._walk is None:
            try:
                walked = walk_tree(self.root)
            except OSError as err:
                raise InputError(
                    f"input folder cannot be listed ({err.strerror or err}); check its permissions"
                ) from None
            if not walked.files and not walked.problems:
                raise InputError(f"{self.root} holds no file")
            self._walk = walked
        return self._walk

    @property
    def problems(self) -> list[tuple[str, str, str]]:
        """``(file pseudonym, code, reason)`` of every path the walk could not read."""
        return [(file_pseudonym(self.pseudo, p.rel), p.code, p.reason) for p in self.walked.problems]

    def __len__(self) -> int:
        return len(self.walked.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rel = self.walked.files[index]
        key, path = file_pseudonym(self.pseudo, rel), self.root / rel
        item: dict[str, Any] = {"key": key, "rel": rel}
        with self.guard.file(path, rel, key) if self.guard is not None else contextlib.nullcontext():
            try:
                source = read_source(path, self.policy, self.guard)
            except (CXRDecodeError, FileRejected) as err:
                return {**item, "error": (err.code, err.reason)}
            except Exception as err:  # one bad file never stops the job; the message goes through the guard
                text = f"{type(err).__name__}: {err}"
                return {**item, "error": ("internal_error", (self.guard.scrub(text) if self.guard else text)[:300])}
        return {**item, "id": self.pseudo.pseudonym(source.instance, kind="image", length=20), "format": source.format,
                "image": source.image, "spacing": source.meta.pixel_spacing, "pixels": source.pixel_sha256}


class CXRInference(SupervisedEvaluator):
    """MONAI evaluator that runs a trained classifier or U-Net on every file of a :class:`RadiographFolder` and writes
    the outputs of the module docstring; a file that cannot be used is listed in ``errors.csv``, never stops the run.

    One iteration per file (``batch_size=None``): the decoded image goes through the model's own preprocessing chain
    (:meth:`display_image`, :meth:`network_input`), then ``inferer(x, network)``; ``engine.state.output`` is the
    file's prediction row. A SOP instance seen again with the same pixels is a ``duplicate``; with other pixels it is
    a ``conflicting_resend`` and *both* copies are withdrawn (the first copy's outputs are deleted). At COMPLETED
    ``predictions.csv``, ``errors.csv`` and the optional path map are written and :attr:`summary` is set. The run
    happens inside ``guard.installed()``: everything printed or logged goes through the PHI filter.

    Args:
        dataset: the files (:class:`RadiographFolder`).
        network: the trained model (e.g. :func:`~mlvicx_monai.networks.artifacts.load_model` of its ``model.pt``).
        model_info: its :class:`~mlvicx_monai.networks.artifacts.ArtifactInfo` (kind, class names, threshold,
            preprocessing); it must be deployable.
        output_dir: where the outputs go.
        inferer: MONAI inferer of the forward pass (default ``SimpleInferer``).
        device: torch device.
        top_k: classifier: Grad-CAM overlays for the ``top_k`` most probable classes of each image ...
        min_probability: ... among those with a probability of at least this (a heat map of a finding the model
            does not see shows nothing meaningful).
        gradcam_layer: target layer of Grad-CAM; ``"auto"``: the classifier's ``gradcam_target_layer``.
        save_heatmaps: write the Grad-CAM overlays.
        phi_path_map: opt-in, local-only CSV (outside ``output_dir``) mapping each file pseudonym to its path.
        val_handlers: extra MONAI/ignite handlers.
    """

    def __init__(
        self,
        dataset: RadiographFolder,
        network: torch.nn.Module,
        model_info: ArtifactInfo,
        output_dir: str | os.PathLike,
        inferer: Inferer | None = None,
        device: str | torch.device = "cpu",
        top_k: int = 2,
        min_probability: float = 0.5,
        gradcam_layer: str = "auto",
        save_heatmaps: bool = True,
        phi_path_map: str | os.PathLike = "",
        val_handlers: list | None = None,
    ) -> None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k must be a non-negative integer, got {top_k!r}")
        if not 0.0 <= float(min_probability) <= 1.0:
            raise ValueError(f"min_probability must be in [0, 1], got {min_probability!r}")
        if model_info.kind not in (ModelKind.CLASSIFIER, ModelKind.SEGMENTER) or not model_info.deployable:
            raise ArtifactError(f"{model_info.path} is not a deployable classifier or segmenter (no class names or "
                                "preprocessing record)")
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, collate_fn=_as_is)
        super().__init__(device=torch.device(device), val_data_loader=loader, network=network,
                         inferer=inferer or SimpleInferer(), iteration_update=self._step, val_handlers=val_handlers,
                         decollate=False)
        self.dataset = dataset
        self.torch_device = torch.device(device)
        self.info = model_info
        self.output_dir = Path(output_dir)
        self.kind = model_info.kind.value
        self.class_names = list(model_info.class_names)
        self.top_k = min(top_k, len(self.class_names))
        self.min_probability = float(min_probability)
        auto_layer = gradcam_layer == "auto" and self.kind == "classifier"
        self.gradcam_layer = network.gradcam_target_layer if auto_layer else gradcam_layer
        self.save_heatmaps = save_heatmaps
        inputs = [dataset.root]
        self.phi_path_map = check_path_map(phi_path_map, [self.output_dir], inputs) if phi_path_map else None
        self.preprocessing = model_info.preprocessing
        self.source_size = self.preprocessing.source_size
        self.threshold = model_info.threshold if model_info.threshold is not None else 0.5
        # the model's own chain after the ingestion step (the same factory its training bundle used)
        self.transform = Compose([*self.preprocessing.cached("image"), *self.preprocessing.runtime("image")])
        self._cam = None
        self.summary: dict[str, Any] = {}
        self.add_event_handler(Events.STARTED, self._started)
        self.add_event_handler(Events.COMPLETED, self._completed)

    @classmethod
    def from_paths(
        cls,
        input_dir: str | os.PathLike,
        model_path: str | os.PathLike,
        output_dir: str | os.PathLike,
        deid_secret: str | os.PathLike = "",
        new_secret: bool = False,
        filter_headers: bool = True,
        allow_burned_in: bool = False,
        detect_burned_in_text: bool = True,
        max_pixel_mb: float = DEFAULT_MAX_PIXEL_BYTES / 2**20,
        device: str | torch.device = "cpu",
        **options: Any,
    ) -> "CXRInference":
        """The job the inference bundle builds, from paths (``options``: :class:`CXRInference`'s own arguments).

        Raises:
            ArtifactError: ``model_path`` is not a deployable classifier or segmenter.
            DeidSecretError: a missing named secret without ``new_secret``, or a secret inside ``output_dir``.
        """
        network, info = load_model(model_path, expect=(ModelKind.CLASSIFIER, ModelKind.SEGMENTER), map_location=device,
                                   require_preprocessing=True)
        pseudo = Pseudonymizer.from_file(deid_secret or None, create=bool(new_secret), outputs=[Path(output_dir)])
        policy = source_policy(filter_headers, allow_burned_in, detect_burned_in_text, max_pixel_mb)
        folder = RadiographFolder(input_dir, policy, pseudo, PHIGuard([input_dir]))
        return cls(folder, network, info, output_dir, device=device, **options)

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
        return x[None].to(self.torch_device)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """Decoded image ``(rows, cols)`` in [0, 1] -> network input ``[1, 1, S, S]`` (as in training)."""
        return self.network_input(self.display_image(image))

    # ---- model outputs ------------------------------------------------------------------------------
    def heatmap(self, x: torch.Tensor, class_idx: int, shape: tuple[int, int]) -> np.ndarray:
        """Grad-CAM of class ``class_idx`` for the network input ``x`` ``[1, 1, S, S]``, in [0, 1] (bright = evidence),
        resized to ``shape`` (rows, cols) of the displayed image."""
        if self.kind != "classifier":
            raise ValueError("Grad-CAM heat maps are for classifiers; a segmenter's output is its mask")
        if self._cam is None:
            from monai.visualize import GradCAM

            self._cam = GradCAM(
                nn_module=self.network, target_layers=self.gradcam_layer, postprocessing=gradcam_normalizer
            )
        heat = self._cam(x.detach().clone().requires_grad_(True), class_idx=int(class_idx))[0, 0].detach().cpu().numpy()
        return _resize(heat, shape[0], shape[1], Image.Resampling.BILINEAR)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(self.inferer(x, self.network))[0].float().cpu().numpy()

    def _classify(self, item: dict[str, Any], x: torch.Tensor, display: np.ndarray) -> dict[str, Any]:
        probs = self._forward(x)
        row: dict[str, Any] = {"id": item["id"], "format": item["format"]}
        row.update({f"prob:{c}": f"{p:.6f}" for c, p in zip(self.class_names, probs)})
        order = [k for k in np.argsort(-probs)[: self.top_k] if probs[k] >= self.min_probability]
        row["findings"] = ";".join(self.class_names[k] for k in order)
        if self.save_heatmaps:
            for rank, k in enumerate(order, start=1):
                heat = self.heatmap(x, int(k), display.shape)
                name = f"{item['id']}_{rank}_{_safe(self.class_names[k])}.png"
                _write_png(self.output_dir / "heatmaps" / name, heatmap_overlay(display, heat))
                row.setdefault("_files", []).append(self.output_dir / "heatmaps" / name)
        return row

    def _segment(self, item: dict[str, Any], x: torch.Tensor) -> dict[str, Any]:
        prob = self._forward(x)[0]
        image, ident = np.asarray(item["image"]), item["id"]
        rows, cols = image.shape
        prob_full = np.clip(_resize(prob, rows, cols, Image.Resampling.BILINEAR), 0, 1)
        mask = prob_full > float(self.threshold)
        folder = self.output_dir / "masks"
        folder.mkdir(parents=True, exist_ok=True)
        _write_png(folder / f"{ident}_mask.png", mask.astype(np.uint8) * 255)
        import nibabel as nib

        spacing = item["spacing"] or (1.0, 1.0)  # mm when the header gives it, else pixels
        nifti = nib.Nifti1Image(mask.astype(np.uint8), affine=np.diag([spacing[0], spacing[1], 1.0, 1.0]))
        nifti.header.set_xyzt_units("mm" if item["spacing"] else "unknown")
        nifti_bytes = gzip.compress(nifti.to_bytes(), mtime=0)
        atomic_write(folder / f"{ident}_mask.nii.gz", lambda tmp: tmp.write_bytes(nifti_bytes))
        _write_png(folder / f"{ident}_overlay.png", heatmap_overlay(image, mask.astype(np.float32), alpha=0.4))
        name = self.class_names[0]
        return {
            "_files": [folder / f"{ident}_{suffix}" for suffix in ("mask.png", "mask.nii.gz", "overlay.png")],
            "id": ident,
            "format": item["format"],
            f"max_prob:{name}": f"{float(prob.max()):.6f}",
            "mask_pixels": int(mask.sum()),
            "mask_fraction": f"{float(mask.mean()):.6f}",
        }

    # ---- the job ------------------------------------------------------------------------------------------
    def run(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """Process every file (MONAI's evaluator run, inside the PHI guard); returns :attr:`summary`."""
        guard = self.dataset.guard or PHIGuard([self.dataset.root])
        self.dataset.guard = guard
        with guard.installed(trusted=(InputError,)):
            if len(self.dataset):  # an empty or unlistable folder fails here, before any output
                super().run(*args, **kwargs)
            else:  # only paths the walk could not read: nothing to iterate, still every one listed
                self._started(self)
                self._completed(self)
        return self.summary

    def _started(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._rows: dict[str, dict[str, Any]] = {}  # image id -> prediction row, in file order
        self._errors: list[tuple[str, str, str]] = list(self.dataset.problems)
        self._done: dict[str, tuple[str, str]] = {}  # image id -> (file key, pixel hash) of the file it came from
        self._conflicted: set[str] = set()

    def _step(self, engine: Engine, item: dict[str, Any]) -> dict[str, Any]:
        key = item["key"]
        guard = self.dataset.guard
        with guard.file(self.dataset.root / item["rel"], item["rel"], key) if guard else contextlib.nullcontext():
            try:
                if "error" in item:
                    raise FileRejected(*item["error"])
                ident = item["id"]
                if ident in self._conflicted or (ident in self._done and self._done[ident][1] != item["pixels"]):
                    raise FileRejected("conflicting_resend", "another file has this SOPInstanceUID with different "
                                       "pixels; neither is used: resolve the re-send at the PACS")
                if ident in self._done:
                    raise FileRejected("duplicate", f"the same image (SOP instance and pixels) as file "
                                                    f"{self._done[ident][0]}, processed once")
                image = np.asarray(item["image"], dtype=np.float32)
                display = self.display_image(image)
                x = self.network_input(display)
                if self.kind == "classifier":
                    row = self._classify(item, x, display)
                else:
                    row = self._segment({**item, "image": image}, x)
                self._done[ident] = (key, item["pixels"])
                self._rows[ident] = row
                return row
            except (CXRDecodeError, FileRejected) as err:
                if err.code == "conflicting_resend" and item["id"] not in self._conflicted:
                    self._withdraw(self._rows.pop(item["id"]))  # the first copy's outputs may show the wrong pixels
                    self._errors.append((self._done[item["id"]][0], err.code, err.reason))
                    self._conflicted.add(item["id"])
                self._errors.append((key, err.code, err.reason))
            except Exception as err:  # one bad file never stops the job; the message goes through the guard
                text = f"{type(err).__name__}: {err}"
                self._errors.append((key, "internal_error", (guard.scrub(text) if guard else text)[:300]))
                logger.warning("internal error on file %s (%s)", key, type(err).__name__)
        return {}

    def _completed(self, engine: Engine) -> None:
        predictions = [{k: v for k, v in row.items() if k != "_files"} for row in self._rows.values()]  # file order
        atomic_write_csv(self.output_dir / "predictions.csv", predictions, header=None if predictions else ["id"])
        write_rejections(self.output_dir / "errors.csv", self._errors)
        walked = self.dataset.walked
        if self.phi_path_map is not None:
            codes = {key: code for key, code, _ in self._errors}
            rels = [*walked.files, *(p.rel for p in walked.problems)]
            entries = [(file_pseudonym(self.dataset.pseudo, rel), rel) for rel in rels]
            write_path_map(self.phi_path_map, [(key, codes.get(key, "processed"), rel) for key, rel in entries])
            logger.warning("wrote the source path of every file (PHI) to the local map %s", self.phi_path_map)
        n_files = len(walked.files) + len(walked.problems)
        self.summary = {"files": n_files, "images": len(predictions), "errors": len(self._errors), "kind": self.kind,
                        "output_dir": str(self.output_dir)}
        logger.info("inference: %d files, %d images processed, %d listed in errors.csv", n_files, len(predictions),
                    len(self._errors))

    @staticmethod
    def _withdraw(row: dict[str, Any]) -> None:
        for path in row.get("_files", ()):
            Path(path).unlink(missing_ok=True)


def _as_is(item: dict[str, Any]) -> dict[str, Any]:
    """The DataLoader's collate function of :class:`CXRInference`: one file per iteration, unchanged (no tensors:
    images are decoded arrays of any size, errors are strings)."""
    return item
