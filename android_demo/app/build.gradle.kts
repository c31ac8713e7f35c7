plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "io.github.tinytl.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "io.github.tinytl.demo"
        // 26 (Android 8.0): the weight file is replaced with java.nio.file.Files.move(ATOMIC_MOVE) and its CRC is
        // computed with CRC32.update(ByteBuffer), both API 26; LiteRT 1.4.1 itself needs 21. See docs/ANDROID.md.
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1"
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions {
        jvmTarget = "17"
    }

    // The interpreter memory-maps model.tflite straight from the APK, which needs the asset stored uncompressed.
    androidResources {
        noCompress += "tflite"
    }
}

dependencies {
    // LiteRT (formerly TensorFlow Lite); 1.4.x is the maintained line of the org.tensorflow.lite.Interpreter API.
    implementation("com.google.ai.edge.litert:litert:1.4.1")

    implementation("androidx.core:core-ktx:1.13.1") // FileProvider for the camera's output file
    implementation("androidx.activity:activity-ktx:1.9.3") // Activity Result API, by viewModels()
    implementation("androidx.lifecycle:lifecycle-viewmodel-ktx:2.8.7")
    implementation("androidx.lifecycle:lifecycle-runtime-ktx:2.8.7") // repeatOnLifecycle
    implementation("androidx.exifinterface:exifinterface:1.3.7")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.9.0")
}
