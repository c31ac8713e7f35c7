package io.github.tinytl.demo

import android.app.AlertDialog
import android.content.ActivityNotFoundException
import android.os.Bundle
import android.view.View
import android.widget.AdapterView
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.ImageView
import android.widget.ProgressBar
import android.widget.Spinner
import android.widget.TextView
import androidx.activity.ComponentActivity
import androidx.activity.result.contract.ActivityResultContracts
import androidx.activity.viewModels
import androidx.lifecycle.Lifecycle
import androidx.lifecycle.lifecycleScope
import androidx.lifecycle.repeatOnLifecycle
import kotlinx.coroutines.launch
import java.io.IOException

/** One screen: collect labelled pictures, train, classify. All state lives in [MainViewModel]; this only draws it. */
class MainActivity : ComponentActivity() {

    private val vm: MainViewModel by viewModels()

    private val takePicture = registerForActivityResult(ActivityResultContracts.TakePicture()) { vm.onPhotoTaken(it) }
    private val pickPicture = registerForActivityResult(ActivityResultContracts.GetContent()) { vm.onPicturePicked(it) }

    private lateinit var loading: ProgressBar
    private lateinit var errorText: TextView
    private lateinit var content: View
    private lateinit var summary: TextView
    private lateinit var labelSpinner: Spinner
    private lateinit var sampleCounts: TextView
    private lateinit var startTraining: Button
    private lateinit var stopTraining: Button
    private lateinit var trainingIndicator: ProgressBar
    private lateinit var trainingProgress: TextView
    private lateinit var predictionImage: ImageView
    private lateinit var predictionText: TextView
    private lateinit var log: TextView
    private var shownLabels: List<String>? = null

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        loading = findViewById(R.id.loading)
        errorText = findViewById(R.id.errorText)
        content = findViewById(R.id.content)
        summary = findViewById(R.id.summary)
        labelSpinner = findViewById(R.id.labelSpinner)
        sampleCounts = findViewById(R.id.sampleCounts)
        startTraining = findViewById(R.id.startTraining)
        stopTraining = findViewById(R.id.stopTraining)
        trainingIndicator = findViewById(R.id.trainingIndicator)
        trainingProgress = findViewById(R.id.trainingProgress)
        predictionImage = findViewById(R.id.predictionImage)
        predictionText = findViewById(R.id.predictionText)
        log = findViewById(R.id.log)

        labelSpinner.onItemSelectedListener = object : AdapterView.OnItemSelectedListener {
            override fun onItemSelected(parent: AdapterView<*>?, view: View?, position: Int, id: Long) {
                vm.selectedLabel = position
            }

            override fun onNothingSelected(parent: AdapterView<*>?) = Unit
        }
        findViewById<Button>(R.id.addFromCamera).setOnClickListener { openCamera(MainViewModel.Purpose.SAMPLE) }
        findViewById<Button>(R.id.addFromGallery).setOnClickListener { openGallery(MainViewModel.Purpose.SAMPLE) }
        findViewById<Button>(R.id.classifyCamera).setOnClickListener { openCamera(MainViewModel.Purpose.CLASSIFY) }
        findViewById<Button>(R.id.classifyGallery).setOnClickListener { openGallery(MainViewModel.Purpose.CLASSIFY) }
        startTraining.setOnClickListener { vm.startTraining() }
        stopTraining.setOnClickListener { vm.stopTraining() }
        findViewById<Button>(R.id.resetWeights).setOnClickListener {
            confirm(R.string.reset_weights_confirm) { vm.resetWeights() }
        }
        findViewById<Button>(R.id.clearSamples).setOnClickListener {
            confirm(R.string.clear_samples_confirm) { vm.clearSamples() }
        }

        lifecycleScope.launch {
            repeatOnLifecycle(Lifecycle.State.STARTED) { vm.state.collect(::render) }
        }
    }

    private fun openCamera(purpose: MainViewModel.Purpose) {
        try {
            takePicture.launch(vm.cameraUri(purpose))
        } catch (e: ActivityNotFoundException) {
            vm.cancelPending()
            vm.log("No camera app on this device; use the gallery.")
        } catch (e: IOException) {
            vm.cancelPending()
            vm.log("Cannot create a file for the photo: ${e.message}")
        }
    }

    private fun openGallery(purpose: MainViewModel.Purpose) {
        vm.beginPick(purpose)
        try {
            pickPicture.launch("image/*")
        } catch (e: ActivityNotFoundException) {
            vm.cancelPending()
            vm.log("No app to pick pictures with on this device.")
        }
    }

    private fun confirm(message: Int, action: () -> Unit) {
        AlertDialog.Builder(this)
            .setMessage(message)
            .setPositiveButton(android.R.string.ok) { _, _ -> action() }
            .setNegativeButton(android.R.string.cancel, null)
            .show()
    }

    private fun render(s: MainViewModel.UiState) {
        loading.visibility = if (s.loading) View.VISIBLE else View.GONE
        errorText.visibility = if (s.error != null) View.VISIBLE else View.GONE
        errorText.text = s.error
        content.visibility = if (!s.loading && s.error == null) View.VISIBLE else View.GONE

        summary.text = s.summary
        if (s.labels != shownLabels) {
            shownLabels = s.labels
            labelSpinner.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_item, s.labels).apply {
                setDropDownViewResource(android.R.layout.simple_spinner_dropdown_item)
            }
            if (vm.selectedLabel in s.labels.indices) labelSpinner.setSelection(vm.selectedLabel)
        }
        sampleCounts.text = getString(
            R.string.sample_counts,
            s.sampleCounts.sum(),
            s.labels.zip(s.sampleCounts).joinToString("\n") { (label, n) -> "$label: $n" },
        )
        startTraining.isEnabled = !s.training
        stopTraining.isEnabled = s.training
        trainingIndicator.visibility = if (s.training) View.VISIBLE else View.GONE
        trainingProgress.text = s.progress
        predictionText.text = s.prediction
        predictionImage.setImageBitmap(s.predictionImage)
        predictionImage.visibility = if (s.predictionImage != null) View.VISIBLE else View.GONE
        log.text = s.log.joinToString("\n")
    }
}
