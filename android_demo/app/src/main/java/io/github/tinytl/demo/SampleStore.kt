package io.github.tinytl.demo

import java.io.File
import java.io.IOException
import java.net.URLDecoder
import java.net.URLEncoder
import java.nio.file.Files
import java.nio.file.StandardCopyOption
import java.util.UUID

/**
 * Labelled pictures in app storage as a class-per-folder tree, `root/<label>/<id>.<ext>`: the layout
 * tinytl_tf.imagefiles.scan_image_folder reads, so the folder can be pulled off the device and trained on a desktop.
 * Folder names are the labels URL-encoded (a label may contain '/'); folders of labels the current model does not
 * have are kept but not used.
 */
class SampleStore(private val root: File) {

    data class Sample(val file: File, val label: Int)

    /** Moves [picture] (a file the app owns, e.g. the camera's output) in under [label]; returns the stored file. */
    fun add(picture: File, label: String, extension: String): File {
        val dir = dirFor(label)
        if (!dir.isDirectory && !dir.mkdirs()) throw IOException("cannot create $dir")
        val target = File(dir, "${System.currentTimeMillis()}-${UUID.randomUUID().toString().take(8)}.$extension")
        Files.move(picture.toPath(), target.toPath(), StandardCopyOption.REPLACE_EXISTING)
        return target
    }

    /** Every stored sample whose folder is one of [labels], label = its index there; sorted for a stable order. */
    fun list(labels: List<String>): List<Sample> = labels.flatMapIndexed { i, label ->
        (dirFor(label).listFiles() ?: emptyArray())
            .filter { it.isFile && !it.name.startsWith(".") }
            .sortedBy { it.name }
            .map { Sample(it, i) }
    }

    fun counts(labels: List<String>): List<Int> = labels.map { label ->
        dirFor(label).listFiles()?.count { it.isFile && !it.name.startsWith(".") } ?: 0
    }

    /** Labels of folders present on disk that [labels] does not contain (samples kept from another model). */
    fun foreignLabels(labels: List<String>): List<String> {
        val known = labels.map { dirFor(it).name }.toSet()
        return (root.listFiles() ?: emptyArray())
            .filter { it.isDirectory && it.name !in known }
            .map { URLDecoder.decode(it.name, "UTF-8") }
    }

    fun clear(labels: List<String>) {
        labels.forEach { dirFor(it).deleteRecursively() }
    }

    private fun dirFor(label: String): File {
        // URL-encoding leaves '.' alone; a leading one would make "." / ".." or a hidden folder.
        val encoded = URLEncoder.encode(label, "UTF-8").let { if (it.startsWith(".")) "%2E" + it.substring(1) else it }
        return File(root, encoded.ifEmpty { "%00" })
    }
}
