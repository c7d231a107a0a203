//! Sentence embeddings (all-MiniLM-L6-v2 or any BERT-style ONNX export with
//! `last_hidden_state`): tokenisation, mean pooling over the attention mask and L2
//! normalisation, on a dedicated inference thread that batches concurrent requests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ndarray::{Array2, Axis};
use ort::session::Session;
use ort::value::Tensor;
use tokenizers::{Encoding, Tokenizer};
use tokio::sync::{mpsc, oneshot};

use crate::runtime::{open_session, Provider, SessionSettings};
use crate::InferenceError;

/// Texts per model run on the CPU: few enough that sorted neighbours have similar
/// lengths, enough to amortise a run's fixed cost.
const CPU_SUB_BATCH: usize = 8;

/// The bundled default model, produced by `onnx-models/minilm.py convert`.
pub const DEFAULT_MODEL_DIR: &str = "onnx-models/all-MiniLM-L6-v2";

/// Finds the default model directory: in this directory or above, or above the executable.
pub fn find_default_model() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    cwd.iter()
        .flat_map(|c| c.ancestors())
        .chain(exe.iter().flat_map(|e| e.ancestors().skip(1)))
        .map(|root| root.join(DEFAULT_MODEL_DIR))
        .find(|dir| dir.join("model.onnx").is_file())
}

/// A model directory: `model.onnx` and `tokenizer.json`.
#[derive(Debug)]
pub struct EmbeddingModel {
    session: Session,
    tokenizer: Tokenizer,
    provider: Provider,
    token_type_ids: bool,
    dimension: usize,
}

impl EmbeddingModel {
    pub fn open(dir: &Path, settings: &SessionSettings) -> Result<Self, InferenceError> {
        let model = dir.join("model.onnx");
        let tokenizer_file = dir.join("tokenizer.json");
        if !model.is_file() || !tokenizer_file.is_file() {
            return Err(InferenceError::Model(format!(
                "{} needs model.onnx and tokenizer.json; produce the default with \
                 `.venv/bin/python onnx-models/minilm.py convert` (./scripts/setup.sh runs it)",
                dir.display()
            )));
        }
        let mut tokenizer = Tokenizer::from_file(&tokenizer_file)
            .map_err(|e| InferenceError::Model(format!("{}: {e}", tokenizer_file.display())))?;
        // Padding is done per model run (see `embed`), not by the tokenizer.
        tokenizer.with_padding(None);
        let (session, provider) = open_session(&model, settings)?;
        let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for needed in ["input_ids", "attention_mask"] {
            if !inputs.contains(&needed) {
                return Err(InferenceError::Model(format!(
                    "{} has inputs {inputs:?}, expected input_ids and attention_mask",
                    model.display()
                )));
            }
        }
        let token_type_ids = inputs.contains(&"token_type_ids");
        let output = session
            .outputs()
            .first()
            .ok_or_else(|| InferenceError::Model(format!("{} has no outputs", model.display())))?;
        let dimension = output
            .dtype()
            .tensor_shape()
            .and_then(|s| s.last().copied())
            .filter(|d| *d > 0)
            .map(|d| d as usize)
            .ok_or_else(|| {
                InferenceError::Model(format!(
                    "{}: output {} has no fixed hidden size",
                    model.display(),
                    output.name()
                ))
            })?;
        Ok(Self {
            session,
            tokenizer,
            provider,
            token_type_ids,
            dimension,
        })
    }

    pub fn provider(&self) -> Provider {
        self.provider
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Embeds a batch: one L2-normalised vector per text, in order.
    ///
    /// On the CPU, where a run costs in proportion to the padded tokens, the texts are
    /// sorted by length and run in sub-batches of similar lengths, so a batch does not
    /// pay for padding every text to its longest; on a GPU the batch runs whole.
    pub fn embed(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>, InferenceError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let tokenised = if let [text] = texts {
            // One text needs no hop to the tokenizer's thread pool.
            self.tokenizer.encode(*text, true).map(|e| vec![e])
        } else {
            self.tokenizer.encode_batch(texts.to_vec(), true)
        };
        let encodings =
            tokenised.map_err(|e| InferenceError::Inference(format!("tokenisation: {e}")))?;
        let sub_batch = match self.provider {
            Provider::Cpu => CPU_SUB_BATCH,
            Provider::Cuda(_) => encodings.len(),
        };
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].len());
        let mut vectors: Vec<Vec<f32>> = vec![Vec::new(); encodings.len()];
        for chunk in order.chunks(sub_batch.max(1)) {
            let group: Vec<&Encoding> = chunk.iter().map(|&i| &encodings[i]).collect();
            for (&i, v) in chunk.iter().zip(self.run(&group)?) {
                vectors[i] = v;
            }
        }
        Ok(vectors)
    }

    /// One model run over encodings padded to the longest of them.
    fn run(&mut self, encodings: &[&Encoding]) -> Result<Vec<Vec<f32>>, InferenceError> {
        let batch = encodings.len();
        let seq = encodings.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
        let mut ids = Array2::<i64>::zeros((batch, seq));
        let mut mask = Array2::<i64>::zeros((batch, seq));
        let mut types = Array2::<i64>::zeros((batch, seq));
        for (row, enc) in encodings.iter().enumerate() {
            for (col, ((&id, &m), &t)) in enc
                .get_ids()
                .iter()
                .zip(enc.get_attention_mask())
                .zip(enc.get_type_ids())
                .enumerate()
            {
                ids[[row, col]] = i64::from(id);
                mask[[row, col]] = i64::from(m);
                types[[row, col]] = i64::from(t);
            }
        }
        let tensor = |a: Array2<i64>| {
            Tensor::from_array(a).map_err(|e| InferenceError::Inference(e.to_string()))
        };
        let mask_weights = mask.mapv(|m| m as f32);
        let mut inputs = ort::inputs![
            "input_ids" => tensor(ids)?,
            "attention_mask" => tensor(mask)?,
        ];
        if self.token_type_ids {
            inputs.push(("token_type_ids".into(), tensor(types)?.into()));
        }
        let outputs = self
            .session
            .run(inputs)
            .map_err(|e| InferenceError::Inference(e.to_string()))?;
        let hidden = outputs[0]
            .try_extract_array::<f32>()
            .map_err(|e| InferenceError::Inference(e.to_string()))?;
        let hidden = hidden
            .into_dimensionality::<ndarray::Ix3>()
            .map_err(|e| InferenceError::Inference(format!("output shape: {e}")))?;
        Ok(mean_pool_normalise(hidden, &mask_weights))
    }
}

/// Mean over the tokens the mask keeps, then L2 normalisation (sentence-transformers'
/// pooling for this model).
fn mean_pool_normalise(hidden: ndarray::ArrayView3<'_, f32>, mask: &Array2<f32>) -> Vec<Vec<f32>> {
    hidden
        .axis_iter(Axis(0))
        .zip(mask.axis_iter(Axis(0)))
        .map(|(tokens, weights)| {
            let count = weights.sum().max(1e-9);
            let mut pooled = weights.dot(&tokens) / count;
            let norm = pooled.dot(&pooled).sqrt().max(1e-12);
            pooled /= norm;
            pooled.to_vec()
        })
        .collect()
}

/// Settings of the batching thread.
#[derive(Debug, Clone)]
pub struct EmbedderSettings {
    pub session: SessionSettings,
    /// Most texts in one model run; concurrent requests are merged up to it.
    pub max_batch: usize,
    /// Requests waiting beyond this are refused (back-pressure), not queued without bound.
    pub queue: usize,
}

impl Default for EmbedderSettings {
    fn default() -> Self {
        Self {
            session: SessionSettings::default(),
            max_batch: 32,
            queue: 1024,
        }
    }
}

struct Request {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, InferenceError>>,
}

/// Observes each model run (for metrics): batch size and seconds.
pub type RunObserver = Box<dyn Fn(usize, Duration) + Send>;

/// A cheap, cloneable handle to the inference thread. The thread owns the session (runs
/// take `&mut`), takes whatever requests are waiting when it is free (up to `max_batch`
/// texts), runs them as one batch and answers each; async callers never block on the
/// model. It stops when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct Embedder {
    tx: mpsc::Sender<Request>,
    provider: Provider,
    dimension: usize,
    model_dir: PathBuf,
}

impl Embedder {
    /// Opens the model and starts the inference thread.
    pub fn start(
        model_dir: &Path,
        settings: EmbedderSettings,
        observer: Option<RunObserver>,
    ) -> Result<Self, InferenceError> {
        let model = EmbeddingModel::open(model_dir, &settings.session)?;
        let (provider, dimension) = (model.provider(), model.dimension());
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let max_batch = settings.max_batch.max(1);
        std::thread::Builder::new()
            .name("qefleet-embed".into())
            .spawn(move || serve(model, rx, max_batch, observer))
            .map_err(|e| {
                InferenceError::Runtime(format!("cannot start the inference thread: {e}"))
            })?;
        tracing::info!(model = %model_dir.display(), %provider, dimension, "embedder ready");
        Ok(Self {
            tx,
            provider,
            dimension,
            model_dir: model_dir.to_path_buf(),
        })
    }

    pub fn provider(&self) -> Provider {
        self.provider
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    pub fn model_dir(&self) -> &Path {
        &self.model_dir
    }

    /// Embeds texts (batched with whatever else is waiting).
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, InferenceError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(Request { texts, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    InferenceError::Overloaded("embedding queue is full".into())
                }
                mpsc::error::TrySendError::Closed(_) => {
                    InferenceError::Runtime("the inference thread has stopped".into())
                }
            })?;
        answer
            .await
            .map_err(|_| InferenceError::Runtime("the inference thread has stopped".into()))?
    }

    /// Embeds one text.
    pub async fn embed_one(&self, text: &str) -> Result<Vec<f32>, InferenceError> {
        let mut v = self.embed(vec![text.to_string()]).await?;
        v.pop()
            .ok_or_else(|| InferenceError::Inference("no embedding returned".into()))
    }

    /// Embeds one text and records the time in `qefleet_inference_seconds{op="embed"}`.
    pub async fn embed_one_observed(
        &self,
        text: &str,
        metrics: &qefleet_shared::metrics::Metrics,
    ) -> Result<Vec<f32>, InferenceError> {
        let started = Instant::now();
        let embedding = self.embed_one(text).await?;
        metrics
            .inference_seconds
            .with_label_values(&["embed", self.provider().label()])
            .observe(started.elapsed().as_secs_f64());
        Ok(embedding)
    }
}

/// The process's embedder for `model_dir`: started by the first caller, shared by every
/// later one (scheduler and workers in one process hold one model, one thread).
pub fn shared(model_dir: &Path, settings: EmbedderSettings) -> Result<Embedder, InferenceError> {
    static EMBEDDERS: OnceLock<Mutex<HashMap<PathBuf, Embedder>>> = OnceLock::new();
    let key = model_dir
        .canonicalize()
        .unwrap_or_else(|_| model_dir.to_path_buf());
    let mut embedders = EMBEDDERS
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| InferenceError::Runtime("the embedder registry is poisoned".into()))?;
    if let Some(existing) = embedders.get(&key) {
        return Ok(existing.clone());
    }
    let embedder = Embedder::start(&key, settings, None)?;
    embedders.insert(key, embedder.clone());
    Ok(embedder)
}

impl Embedder {
    /// Whether two handles reach the same inference thread.
    pub fn same_as(&self, other: &Embedder) -> bool {
        self.tx.same_channel(&other.tx)
    }
}

fn serve(
    mut model: EmbeddingModel,
    mut rx: mpsc::Receiver<Request>,
    max_batch: usize,
    observer: Option<RunObserver>,
) {
    let mut carried: Option<Request> = None;
    loop {
        let first = match carried.take() {
            Some(r) => r,
            None => match rx.blocking_recv() {
                Some(r) => r,
                None => return,
            },
        };
        let mut batch = vec![first];
        let mut texts: usize = batch[0].texts.len();
        while texts < max_batch {
            match rx.try_recv() {
                Ok(r) if texts + r.texts.len() <= max_batch => {
                    texts += r.texts.len();
                    batch.push(r);
                }
                Ok(r) => {
                    carried = Some(r);
                    break;
                }
                Err(_) => break,
            }
        }
        run_batch(&mut model, batch, max_batch, observer.as_ref());
    }
}

/// Runs the requests' texts in model runs of at most `max_batch` and answers each request.
fn run_batch(
    model: &mut EmbeddingModel,
    batch: Vec<Request>,
    max_batch: usize,
    observer: Option<&RunObserver>,
) {
    let all: Vec<&str> = batch
        .iter()
        .flat_map(|r| r.texts.iter().map(String::as_str))
        .collect();
    let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(all.len());
    let mut failure: Option<InferenceError> = None;
    for chunk in all.chunks(max_batch) {
        let started = Instant::now();
        match model.embed(chunk) {
            Ok(v) => {
                if let Some(observe) = observer {
                    observe(chunk.len(), started.elapsed());
                }
                vectors.extend(v);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let mut vectors = vectors.into_iter();
    for request in batch {
        let answer = match &failure {
            Some(e) => Err(e.clone()),
            None => Ok(vectors.by_ref().take(request.texts.len()).collect()),
        };
        // A caller that went away no longer needs its answer.
        let _ = request.reply.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn pooling_averages_only_unmasked_tokens_and_normalises() {
        let hidden =
            ndarray::Array3::from_shape_vec((1, 3, 2), vec![3.0, 0.0, 1.0, 4.0, 100.0, 100.0])
                .expect("shape");
        let mask = array![[1.0f32, 1.0, 0.0]];
        let v = mean_pool_normalise(hidden.view(), &mask);
        // mean of (3,0) and (1,4) = (2,2); normalised (0.7071, 0.7071); the padded token is ignored.
        assert!(
            (v[0][0] - 0.70710677).abs() < 1e-6 && (v[0][1] - 0.70710677).abs() < 1e-6,
            "{v:?}"
        );
    }
}
