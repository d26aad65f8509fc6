"""Build the tiny offline model profile: seeded, random-weight models saved the way real ones are.

Every model is written with its library's own ``save_pretrained`` / checkpoint format and is later loaded by
the services through the same loaders they use for real models (``from_pretrained``, ``TTS(model_path=...)``,
implicit's ``load``). Nothing is downloaded. The output (a few MB) lives under ``.cache/`` and is never committed.

Usage: ``python -m scripts.build_tiny_models [--out DIR] [--force]``
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Bump when a recipe changes: an existing cache built by an older recipe is rebuilt.
RECIPE_VERSION = "5"  # 2: item texts; 3: text-b; 4: the text model learns words; 5: small JSON answers, an encoder
SEED = 1234
DEFAULT_OUT = Path(__file__).resolve().parents[1] / ".cache" / "models" / "tiny"

# A few sentences to train the image model's byte-level BPE tokenizer on; enough to give it real merges.
CORPUS = [
    "Content Studio writes articles, paints pictures and reads them aloud.",
    "The lighthouse keeper watched the storm roll over the quiet harbour.",
    "A short story about mountains, rivers, cities and the people who live there.",
    "Recommendations help readers find the next article, image or podcast they will enjoy.",
    "Breaking news: local bakery wins the national bread competition for the third year.",
    "How to grow tomatoes on a balcony: sunlight, water, patience and good soil.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps.",
    "Title: Ten ideas for a rainy weekend. Body: read a book, bake bread, call a friend.",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|unk|>"]
CHAT_ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]  # atomic, never split or printed
# The tiny text model's training: a seeded corpus (offline/corpus.py), about 40 s on 2 CPU cores.
TEXT_DOCUMENTS = 6000
TEXT_TRAIN_STEPS = 200
TEXT_B_STEPS = 100  # the A/B candidate is the same training stopped halfway: a real, weaker model version
# A minimal chat template so that the chat path goes through ``apply_chat_template`` as with real models.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
VOICE_SPEAKERS = ["ana", "ben"]
# Synthetic interaction set for the recommender: users and items fall into planted communities.
N_USERS, N_ITEMS, N_COMMUNITIES = 60, 40, 4


def _seed_everything(seed: int = SEED) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_tokenizer(out: Path, corpus: list[str] | None = None, vocab_size: int = 512, chat_roles: bool = False):
    """Train a byte-level BPE tokenizer locally and save it as a ``PreTrainedTokenizerFast``. Every byte is in
    its alphabet, so any text encodes (a character outside the corpus spans several byte tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = SPECIAL_TOKENS + (CHAT_ROLE_TOKENS if chat_roles else [])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus or CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|unk|>",
        pad_token="<|pad|>",
        model_max_length=256,
        padding_side="left",
        additional_special_tokens=CHAT_ROLE_TOKENS if chat_roles else None,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def build_text(
    out: Path,
    seed: int = SEED,
    n_embd: int = 128,
    n_layer: int = 2,
    n_head: int = 4,
    n_positions: int = 256,
    train_steps: int = TEXT_TRAIN_STEPS,
    checkpoints: dict[int, Path] | None = None,
) -> None:
    """A GPT-2-architecture causal LM trained for ``train_steps`` on the seeded corpus, with a tokenizer trained on
    the same corpus (so it writes words, not random bytes); ``train_steps=0`` keeps random weights (the benchmark's
    heavier profile only needs realistic compute). ``checkpoints`` saves earlier steps as models of their own."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from offline.corpus import corpus

    _seed_everything(seed)
    documents = corpus(TEXT_DOCUMENTS, seed=seed)
    tok = build_tokenizer(out, documents, vocab_size=1024, chat_roles=True)
    config = GPT2Config(
        vocab_size=len(tok),
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_positions=n_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    if train_steps:
        train_causal_lm(model, tok, documents, train_steps, seed, {s: (p, tok) for s, p in (checkpoints or {}).items()})
    model.save_pretrained(out)


def train_causal_lm(model, tok, documents: list[str], steps: int, seed: int, checkpoints: dict[int, tuple]) -> None:
    """Next-token training on random 128-token windows of the packed corpus (AdamW, warm-up, cosine decay)."""
    import math

    import torch

    ids = torch.tensor([i for doc in documents for i in tok(doc)["input_ids"]])
    window, batch = 128, 32
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 30) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    model.train()
    try:
        for step in range(1, steps + 1):
            starts = torch.randint(0, len(ids) - window - 1, (batch,), generator=generator)
            x = torch.stack([ids[s : s + window] for s in starts.tolist()])
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            if step in checkpoints:
                path, tokenizer = checkpoints[step]
                model.eval()
                model.save_pretrained(path)
                tokenizer.save_pretrained(path)
                model.train()
    finally:
        torch.set_num_threads(threads)
        model.eval()


def build_image(out: Path) -> None:
    """A StableDiffusionPipeline of tiny UNet/VAE/CLIP components, as in diffusers' own dummy components."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    _seed_everything()
    tok = build_tokenizer(out / "_tokenizer")
    tok.model_max_length = 77
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=32,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tok),
            max_position_embeddings=77,
        )
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
    shutil.rmtree(out / "_tokenizer")


def build_embed(out: Path) -> None:
    """A tiny BERT encoder (2 layers, 32 wide) with the byte-level tokenizer, for the embedding service: loaded by
    ``AutoModel`` / ``AutoTokenizer.from_pretrained``, its vectors mean-pooled. Random weights: the vectors mean
    nothing, but their shapes, pooling, batching and every code path are real."""
    from transformers import BertConfig, BertModel

    _seed_everything()
    tok = build_tokenizer(out)
    tok.padding_side = "right"  # an encoder pads after the text (the attention mask hides the padding)
    tok.model_max_length = 128
    tok.save_pretrained(out)
    model = BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=128,
            pad_token_id=tok.pad_token_id,
        )
    )  # with its pooler, as real checkpoints are: ``AutoModel`` loads it without a "newly initialized" warning
    model.save_pretrained(out)


TINY_VITS = {
    "hidden_channels": 32,
    "hidden_channels_ffn_text_encoder": 64,
    "num_layers_text_encoder": 2,
    "num_layers_posterior_encoder": 2,
    "num_layers_flow": 2,
    "resblock_kernel_sizes_decoder": [3],
    "resblock_dilation_sizes_decoder": [[1, 3, 5]],
    "upsample_rates_decoder": [8, 8, 4],
    "upsample_initial_channel_decoder": 32,
    "upsample_kernel_sizes_decoder": [16, 16, 8],
    "speaker_embedding_channels": 16,
}


def build_voice(out: Path, sizes: dict[str, Any] | None = None) -> None:
    """A two-speaker Coqui VITS model, saved as ``model.pth`` + ``config.json``: a few MB with the tiny
    ``sizes`` (the default); VITS's own sizes (``{}``) make one that speaks at a real model's pace."""
    import torch
    from TTS.tts.configs.shared_configs import CharactersConfig
    from TTS.tts.configs.vits_config import VitsConfig
    from TTS.tts.models.vits import Vits, VitsArgs

    _seed_everything()
    out.mkdir(parents=True, exist_ok=True)
    args = VitsArgs(**(TINY_VITS if sizes is None else sizes), use_speaker_embedding=True, init_discriminator=False)
    config = VitsConfig(
        model_args=args,
        use_phonemes=False,
        text_cleaner="basic_cleaners",
        characters=CharactersConfig(
            characters_class="TTS.tts.utils.text.characters.Graphemes",
            pad="_",
            eos="",
            bos="",
            blank="",
            characters="abcdefghijklmnopqrstuvwxyz",
            punctuations="!'(),-.:;? ",
            is_unique=True,
            is_sorted=True,
        ),
        add_blank=False,
        use_speaker_embedding=True,
        speakers=VOICE_SPEAKERS,  # names kept in the config itself, so the folder can move
    )
    config.audio.sample_rate = 16000
    model = Vits(config)
    model.eval()
    torch.save({"model": model.state_dict(), "config": config.to_dict()}, out / "model.pth")
    config.save_json(str(out / "config.json"))


def synthetic_interactions(seed: int = SEED):
    """Seeded implicit-feedback matrix with planted communities: users mostly touch their community's items."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    user_comm = np.arange(N_USERS) % N_COMMUNITIES
    item_comm = np.arange(N_ITEMS) % N_COMMUNITIES
    rows, cols, vals = [], [], []
    for u in range(N_USERS):
        own = np.flatnonzero(item_comm == user_comm[u])
        other = np.flatnonzero(item_comm != user_comm[u])
        picks = list(rng.choice(own, size=6, replace=False)) + list(rng.choice(other, size=1, replace=False))
        for i in picks:
            rows.append(u)
            cols.append(int(i))
            vals.append(float(rng.integers(1, 5)))
    matrix = sp.csr_matrix((vals, (rows, cols)), shape=(N_USERS, N_ITEMS), dtype=np.float32)
    user_ids = np.array([f"user-{u}" for u in range(N_USERS)])
    item_ids = np.array([f"item-{i}" for i in range(N_ITEMS)])
    return matrix, user_ids, item_ids


def build_recommend(out: Path) -> None:
    """ALS factors trained with implicit on the synthetic set, saved with the id maps, matrix and item texts."""
    import numpy as np

    from deployments.recommend.model import save_model_dir
    from offline.interactions import item_text

    _seed_everything()
    from implicit.cpu.als import AlternatingLeastSquares

    matrix, user_ids, item_ids = synthetic_interactions()
    model = AlternatingLeastSquares(factors=8, iterations=10, regularization=0.05, random_state=SEED)
    model.fit(matrix, show_progress=False)
    rng = np.random.default_rng(SEED)
    texts = {str(item): item_text(n % N_COMMUNITIES, rng) for n, item in enumerate(item_ids)}
    save_model_dir(out, model, matrix, user_ids, item_ids, item_texts=texts, meta={"source": "tiny seed"})


def build_text_pair(out: Path) -> None:
    """The text model and its A/B candidate (``text-b``: the same training stopped halfway), in one training run."""
    build_text(out, checkpoints={TEXT_B_STEPS: out.with_name("text-b")})


BUILDERS: dict[str, Callable[[Path], None]] = {
    "text": build_text_pair,
    "image": build_image,
    "voice": build_voice,
    "recommend": build_recommend,
    "embed": build_embed,
}


def _stamp() -> str:
    source = Path(__file__).read_bytes() + Path(__file__).with_name("corpus.py").read_bytes()
    return hashlib.sha256(source + RECIPE_VERSION.encode()).hexdigest()[:16]


def _current(folder: Path) -> bool:
    stamp_file = folder / "BUILD_STAMP"
    return stamp_file.exists() and stamp_file.read_text().strip() == _stamp()


def ensure_tiny_models(out: Path = DEFAULT_OUT, force: bool = False) -> Path:
    """Build the tiny models into ``out`` unless a build by this exact recipe is already there; a current build in
    the checkout's cache (``make models``) is copied instead of trained again."""
    out = Path(out)
    if not force and _current(out):
        return out
    if out.exists():
        shutil.rmtree(out)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    if not force and out.resolve() != DEFAULT_OUT.resolve() and _current(DEFAULT_OUT):
        shutil.copytree(DEFAULT_OUT, tmp)
        tmp.rename(out)
        return out
    for name, build in BUILDERS.items():
        started = time.perf_counter()
        build(tmp / name)
        print(f"built tiny {name} model in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    (tmp / "BUILD_STAMP").write_text(_stamp())
    tmp.rename(out)  # the folder appears whole or not at all
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the models")
    parser.add_argument("--force", action="store_true", help="rebuild even if a current build exists")
    args = parser.parse_args()
    out = ensure_tiny_models(args.out, force=args.force)
    print(out)


if __name__ == "__main__":
    main()
