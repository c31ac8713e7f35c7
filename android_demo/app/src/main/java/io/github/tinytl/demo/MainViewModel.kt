package io.github.tinytl.demo

import android.app.Application
import android.graphics.Bitmap
import android.net.Uri
import android.os.SystemClock
import android.webkit.MimeTypeMap
import androidx.core.content.FileProvider
import androidx.lifecycle.AndroidViewModel
import androidx.lifecycle.SavedStateHandle
import androidx.lifecycle.viewModelScope
import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Job
import kotlinx.coroutines.NonCancellable
import kotlinx.coroutines.asCoroutineDispatcher
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.flow.update
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import java.io.File
import java.io.IOException
import java.nio.ByteBuffer
import java.util.concurrent.ConcurrentHashMap
import java.util.concurrent.Executors
import kotlin.random.Random

/**
 * The app's state and work, kept across rotations (a ViewModel) and, for the pending picture's purpose and the
 * chosen label, across process death (SavedStateHandle: the camera app may push ours out of memory).
 */
class MainViewModel(app: Application, private val saved: SavedStateHandle) : AndroidViewModel(app) {

    enum class Purpose { SAMPLE, CLASSIFY }

    data class UiState(
        val loading: Boolean = true,
        val error: String? = null,
        val summary: String = "",
        val labels: List<String> = emptyList(),
        val sampleCounts: List<Int> = emptyList(),
        val training: Boolean = false,
        val progress: String = "",
        val prediction: String = "",
        val predictionImage: Bitmap? = null,
        val log: List<String> = emptyList(),
    )

    private val context get() = getApplication<Application>()

    // Every interpreter call runs on this one thread, because the interpreter is not thread-safe. Training
    // suspends between steps, so a classification queued here runs between two steps, never inside one.
    private val modelThread = Executors.newSingleThreadExecutor { Thread(it, "tinytl-model") }
    private val modelDispatcher = modelThread.asCoroutineDispatcher()
    private val threads = Runtime.getRuntime().availableProcessors().coerceIn(1, 4)

    // Set and used on the model thread only.
    private var model: TinyTlModel? = null
    private var inferInput: ByteBuffer? = null
    private var lastSave = 0L
    private var unsaved = false

    @Volatile private var preprocessor: Preprocessor? = null
    private val ready = CompletableDeferred<Unit>()
    private val samples = SampleStore(File(app.filesDir, "samples"))
    private val weightStore = WeightStore(File(app.filesDir, "weights/trained.ttlw"))
    private val crops = ConcurrentHashMap<String, ByteArray>() // sample path -> crop, reused by later sessions
    private var trainJob: Job? = null

    private val _state = MutableStateFlow(UiState())
    val state: StateFlow<UiState> = _state.asStateFlow()

    var selectedLabel: Int
        get() = saved[KEY_LABEL] ?: 0
        set(value) {
            saved[KEY_LABEL] = value
        }

    init {
        viewModelScope.launch {
            try {
                val (restored, meta) = withContext(modelDispatcher) { openModel().let { it to model!!.meta } }
                _state.update { it.copy(loading = false, summary = summary(meta), labels = meta.labels) }
                refreshCounts()
                log(restored)
                samples.foreignLabels(meta.labels).takeIf { it.isNotEmpty() }?.let {
                    log("Samples of labels this model does not have are kept but not used: ${it.joinToString()}")
                }
            } catch (e: CancellationException) {
                throw e
            } catch (e: Exception) {
                val message = if (e is ModelException) e.message else "Unexpected error while loading the model: $e"
                _state.update { it.copy(loading = false, error = message) }
            } finally {
                ready.complete(Unit)
            }
        }
    }

    // ---- model lifecycle (model thread) ----

    /** Opens the model, restores saved weights if they belong to it; returns what happened, for the log. */
    private fun openModel(): String {
        var m = TinyTlModel.open(context, threads)
        val message = when (val loaded = weightStore.load(m.meta.fingerprint, m.meta.weights)) {
            is WeightStore.Loaded.Missing -> "No saved weights yet: starting from the exported model."
            is WeightStore.Loaded.Rejected ->
                "Ignored the saved weights: ${loaded.reason}. Starting from the exported model; the next save replaces them."
            is WeightStore.Loaded.Ok -> try {
                m.setWeights(loaded.tensors)
                "Restored the trained weights" + (m.stepOf(loaded.tensors)?.let { " (step $it)" } ?: "") + "."
            } catch (e: Exception) {
                // set_weights may have assigned some tensors before failing: start again from the exported model.
                m.close()
                m = TinyTlModel.open(context, threads)
                "Could not apply the saved weights (${e.message}); starting from the exported model."
            }
        }
        model = m
        inferInput = m.newImageBuffer()
        preprocessor = Preprocessor(m.meta.input)
        return message
    }

    /** [tensors] (get_weights output) -> file; reports instead of throwing, so a full disk never takes the app down. */
    private fun save(m: TinyTlModel, tensors: Tensors) {
        try {
            weightStore.save(m.meta.fingerprint, m.meta.weights, tensors)
            lastSave = SystemClock.elapsedRealtime()
            unsaved = false
            log("Saved the weights" + (m.stepOf(tensors)?.let { " (step $it)" } ?: "") + ".")
        } catch (e: Exception) {
            log("Could not save the weights: ${e.message ?: e}")
        }
    }

    // ---- pictures ----

    /** A new file for the camera app to write into, shared through FileProvider; remembers what it is for. */
    fun cameraUri(purpose: Purpose): Uri {
        val dir = File(context.cacheDir, CAPTURE_DIR).apply { mkdirs() }
        val file = File.createTempFile("photo", ".jpg", dir) // one per capture: an earlier one may still be in use
        saved[KEY_PURPOSE] = purpose.name
        saved[KEY_CAMERA_FILE] = file.path
        return FileProvider.getUriForFile(context, context.packageName + ".fileprovider", file)
    }

    /** The picker or camera could not be started: forget what the picture was for. */
    fun cancelPending() {
        saved.remove<String>(KEY_PURPOSE)
        saved.remove<String>(KEY_CAMERA_FILE)?.let { File(it).delete() }
    }

    fun beginPick(purpose: Purpose) {
        saved[KEY_PURPOSE] = purpose.name
    }

    fun onPhotoTaken(ok: Boolean) {
        val purpose = takePurpose() ?: return
        val file = saved.remove<String>(KEY_CAMERA_FILE)?.let(::File) ?: return
        if (!ok) {
            file.delete()
            return log("No photo taken.")
        }
        handlePicture(file, "jpg", purpose)
    }

    fun onPicturePicked(uri: Uri?) {
        val purpose = takePurpose() ?: return
        if (uri == null) return log("No picture chosen.")
        viewModelScope.launch {
            try {
                val (file, ext) = withContext(Dispatchers.IO) { copyToCache(uri) }
                handlePicture(file, ext, purpose)
            } catch (e: CancellationException) {
                throw e
            } catch (e: Exception) { // IOException, or SecurityException from a provider
                log("Could not read the picture: ${e.message ?: e}")
            }
        }
    }

    private fun handlePicture(file: File, extension: String, purpose: Purpose) {
        when (purpose) {
            Purpose.SAMPLE -> addSample(file, extension)
            Purpose.CLASSIFY -> classify(file)
        }
    }

    private fun addSample(file: File, extension: String) = viewModelScope.launch {
        ready.await()
        val pre = preprocessor ?: return@launch
        val labels = _state.value.labels
        val label = labels.getOrNull(selectedLabel) ?: return@launch log("Choose a label first.")
        try {
            val stored = withContext(Dispatchers.IO) {
                val crop = pre.loadCrop(file) // decodes fully: an unreadable picture is refused here, not mid-training
                samples.add(file, label, extension).also { crops[it.path] = crop }
            }
            refreshCounts()
            log("Added ${stored.name} as '$label'.")
        } catch (e: CancellationException) {
            throw e
        } catch (e: Exception) {
            file.delete()
            log("Not added: ${e.message ?: e}")
        } catch (e: OutOfMemoryError) {
            file.delete()
            log("Not added: the picture is too large to decode on this device.")
        }
    }

    private fun classify(file: File) = viewModelScope.launch {
        ready.await()
        val pre = preprocessor ?: return@launch
        try {
            val crop = try {
                withContext(Dispatchers.Default) { pre.loadCrop(file) }
            } finally {
                file.delete() // a picture to classify is not kept
            }
            val prediction = withContext(modelDispatcher) {
                val m = model ?: throw IOException("the model is not loaded")
                val x = inferInput!!
                pre.normalize(crop, false, x)
                m.infer(x)
            }
            val labels = _state.value.labels
            val top = prediction.probabilities.indices.sortedByDescending { prediction.probabilities[it] }.take(3)
            val text = top.joinToString("\n") { "%-24s %5.1f%%".format(labels[it], 100f * prediction.probabilities[it]) }
            _state.update { it.copy(prediction = text, predictionImage = pre.cropToBitmap(crop)) }
        } catch (e: CancellationException) {
            throw e
        } catch (e: Exception) {
            log("Could not classify: ${e.message ?: e}")
        } catch (e: OutOfMemoryError) {
            log("Could not classify: the picture is too large to decode on this device.")
        }
    }

    fun clearSamples() {
        samples.clear(_state.value.labels)
        crops.clear()
        refreshCounts()
        log("Deleted all samples.")
    }

    // ---- training ----

    fun startTraining() {
        if (trainJob?.isActive == true) return
        val pre = preprocessor ?: return
        val list = samples.list(_state.value.labels)
        if (list.isEmpty()) return log("Add a few labelled pictures first.")
        trainJob = viewModelScope.launch {
            _state.update { it.copy(training = true, progress = "Preparing ${list.size} pictures…") }
            try {
                val prepared = withContext(Dispatchers.Default) { prepare(list, pre) }
                if (prepared.isNotEmpty()) withContext(modelDispatcher) { train(prepared, pre) }
            } catch (e: CancellationException) {
                throw e
            } catch (e: Exception) {
                log("Training stopped by an error: ${e.message ?: e}")
            } finally {
                _state.update { it.copy(training = false) }
            }
        }
    }

    fun stopTraining() {
        trainJob?.cancel() // takes effect at the next step boundary; the current step finishes
    }

    private fun prepare(list: List<SampleStore.Sample>, pre: Preprocessor): List<PreparedSample> {
        var unreadable = 0
        val prepared = list.mapNotNull { s ->
            try {
                PreparedSample(s.file, s.label, crops.getOrPut(s.file.path) { pre.loadCrop(s.file) })
            } catch (e: Exception) {
                unreadable++
                null
            } catch (e: OutOfMemoryError) {
                unreadable++
                null
            }
        }
        if (unreadable > 0) log("Skipped $unreadable unreadable picture(s).")
        if (prepared.isEmpty()) log("None of the pictures could be read.")
        return prepared
    }

    /** On the model thread. Saves the last accepted weights at most once a minute at epoch ends, and at the end. */
    private suspend fun train(prepared: List<PreparedSample>, pre: Preprocessor) {
        val m = model ?: return
        val trainer = Trainer(m, pre, Random(System.nanoTime()))
        if (m.meta.optimizer.finished(trainer.currentStep())) {
            return log("The learning-rate schedule has already decayed to zero; Reset weights to train again.")
        }
        try {
            trainer.run(
                prepared,
                onProgress = { p ->
                    unsaved = true
                    _state.update { it.copy(progress = describe(p)) }
                },
                onEpochEnd = {
                    if (SystemClock.elapsedRealtime() - lastSave > SAVE_INTERVAL_MS) save(m, trainer.weights)
                },
            )
            log("The learning-rate schedule reached zero after ${m.meta.optimizer.totalSteps} steps; training done.")
        } finally {
            withContext(NonCancellable) {
                if (unsaved) save(m, trainer.weights)
                if (trainer.rolledBack > 0) {
                    log("Undid ${trainer.rolledBack} step(s) whose loss or weights were not finite.")
                }
            }
        }
    }

    /** Deletes the saved weights and reloads the exported model, i.e. the state before any on-device training. */
    fun resetWeights() {
        viewModelScope.launch {
            trainJob?.cancelAndJoin()
            try {
                withContext(modelDispatcher) {
                    weightStore.delete()
                    model?.close()
                    model = null
                    openModel()
                }
                _state.update { it.copy(progress = "", prediction = "", predictionImage = null) }
                log("Weights reset to the exported model.")
            } catch (e: Exception) {
                _state.update { it.copy(error = e.message ?: e.toString()) }
            }
        }
    }

    override fun onCleared() {
        val job = trainJob
        job?.cancel()
        // viewModelScope is cancelled now; close on the model thread once training has saved and ended.
        CoroutineScope(modelDispatcher).launch {
            job?.join()
            model?.close()
            model = null
            modelThread.shutdown()
        }
    }

    // ---- helpers ----

    fun log(message: String) {
        _state.update { it.copy(log = (it.log + message).takeLast(LOG_LINES)) }
    }

    private fun refreshCounts() {
        _state.update { it.copy(sampleCounts = samples.counts(it.labels)) }
    }

    private fun takePurpose(): Purpose? = saved.remove<String>(KEY_PURPOSE)?.let { Purpose.valueOf(it) }

    private fun copyToCache(uri: Uri): Pair<File, String> {
        val resolver = context.contentResolver
        val ext = resolver.getType(uri)?.let { MimeTypeMap.getSingleton().getExtensionFromMimeType(it) } ?: "jpg"
        val dir = File(context.cacheDir, CAPTURE_DIR).apply { mkdirs() }
        val file = File.createTempFile("picked", ".$ext", dir)
        (resolver.openInputStream(uri) ?: throw IOException("cannot open $uri")).use { input ->
            file.outputStream().use { input.copyTo(it) }
        }
        return file to ext
    }

    private fun summary(meta: ModelMetadata): String {
        val values = meta.weights.sumOf { it.tensor.elementCount }
        val kinds = meta.weights.groupingBy { it.kind }.eachCount().entries.joinToString { "${it.value} ${it.key}" }
        return "${meta.backbone} · ${meta.method} · ${meta.input.height} px · ${meta.numClasses} classes\n" +
            "${meta.weights.size} tensors saved ($kinds), $values values\n" +
            "${meta.optimizer.name}, lr ${meta.optimizer.lr} ${meta.optimizer.schedule}" +
            (if (meta.optimizer.totalSteps > 0) " over ${meta.optimizer.totalSteps} steps" else "") +
            "\nmodel ${meta.fingerprint.take(12)}…"
    }

    private fun describe(p: Trainer.Progress): String =
        "Epoch ${p.epoch}, picture ${p.indexInEpoch}/${p.epochSize}, step ${p.step}\n" +
            "loss %.4f (epoch mean %.4f)\n".format(p.lastLoss, p.meanLoss) +
            "running accuracy this epoch %.1f%%\n".format(100f * p.accuracy) +
            "lr %.3g (the model's schedule), rolled back %d".format(p.lr, p.rolledBack)

    companion object {
        private const val KEY_PURPOSE = "purpose"
        private const val KEY_LABEL = "label"
        private const val KEY_CAMERA_FILE = "camera_file"
        private const val CAPTURE_DIR = "capture" // shared with the camera app: res/xml/file_paths.xml
        private const val SAVE_INTERVAL_MS = 60_000L
        private const val LOG_LINES = 8
    }
}
